"""Amounts judged by value, and given in minor units (issue 19).

An amount posts when it is a plain positive decimal whose value is a whole number of its
currency's minor units, however many zeros its spelling adds; it is stored in the currency's
places (USD `10.000` → `10.00`, JPY `1500.00` → `1500`). `amountMinor` states the same in integer
minor units. A re-export that only spells an amount differently is the same row (or a duplicate
of another source's), never a conflict.
"""

from __future__ import annotations

import csv
import json
import re
from decimal import Context, Decimal
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries import amounts
from ledger_backfill_dagster.entries.currencies import minor_units_table
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS, SOURCE_FIELDS
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.entries.validation import split
from ledger_backfill_dagster.resources.stage_store import staged_frame
from ledger_backfill_dagster.sources.api import ApiSource
from ledger_backfill_dagster_tests.support.hardening_support import Cli, entry, ok, write_accounts
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants
from ledger_backfill_dagster_tests.support.ledger_api_server import (
    LedgerApiServer,
    malformed,
    page_key,
)

FINER = "amount: more fractional digits than the currency's minor units"
NOT_WHOLE = "amountMinor: not a whole number greater than zero"
DISAGREE = "amount and amountMinor: state different values"
NO_UNIT = "amountMinor: the currency has no minor unit in ISO 4217"
ACCOUNTS = {
    "U1": "USD",
    "U2": "USD",
    "J1": "JPY",
    "J2": "JPY",
    "B1": "BHD",
    "B2": "BHD",
    "E1": "EUR",
    "E2": "EUR",
    "G1": "XAU",
    "G2": "XAU",
}
PAIRS = {
    "USD": ("U1", "U2"),
    "JPY": ("J1", "J2"),
    "BHD": ("B1", "B2"),
    "EUR": ("E1", "E2"),
    "XAU": ("G1", "G2"),
}
EXACT = Context(prec=200)
RULES = TransformRules(account_currencies=ACCOUNTS)


def _staged(rows: list[dict[str, str | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "source_row_id": pd.array(range(1, len(rows) + 1), dtype="int64"),
            "source_file": "test.csv",
            "line_number": pd.array(range(2, len(rows) + 2), dtype="int64"),
        }
    )
    for name in SOURCE_FIELDS:
        frame[name] = pd.array([row.get(name) for row in rows], dtype="string")
    frame["extra_columns"] = pd.array([None] * len(rows), dtype="string")
    frame["timestamp_utc"] = pd.to_datetime(["2024-01-01T10:00:00Z"] * len(rows)).astype(
        "datetime64[us, UTC]"
    )
    return frame


def _row(n: int, currency: str, amount: str | None = None, minor: str | None = None) -> dict:
    debit, credit = PAIRS[currency]
    row: dict[str, str | None] = entry(f"R-{n}", debit, credit, amount or "", currency)
    row["amountMinor"] = minor
    return row


def _judge(*cases: tuple[str, str | None, str | None]) -> list[tuple[str | None, list[str]]]:
    """(stored amount or None, reasons) for each (currency, amount, amountMinor)."""
    rows = [_row(n, c, a, m) for n, (c, a, m) in enumerate(cases)]
    valid, rejects = split(transform(_staged(rows), RULES))
    stored = dict(zip(valid["reference_id"], valid["amount"], strict=True))
    reasons = dict(zip(rejects["source_row_id"], rejects["reasons"], strict=True))
    return [(stored.get(f"R-{n}"), list(reasons.get(n + 1, []))) for n in range(len(cases))]


# --- the contract, by value ---------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["10.000", "10.00", "10.0", "10", " 0010.00 ", "10.0000000"])
def test_every_spelling_of_ten_dollars_posts_as_ten_dollars(spelling: str) -> None:
    assert _judge(("USD", spelling, None)) == [("10.00", [])]


@pytest.mark.parametrize(
    ("currency", "amount", "stored"),
    [
        ("JPY", "1500.00", "1500"),
        ("JPY", "1500.0", "1500"),
        ("BHD", "1.000000", "1.000"),
        ("BHD", "1.1", "1.100"),
        ("USD", "56722.710000000000000000", "56722.71"),
        ("USD", "1234.5000", "1234.50"),
        ("XAU", "1.500", "1.5"),  # no ISO minor unit: its own significant places
        ("USD", "0" * 30 + "1.00", "1.00"),  # leading zeros do not count toward 24 digits
        ("USD", "9" * 24 + ".990000", "9" * 24 + ".99"),
    ],
)
def test_padded_amounts_post_normalized(currency: str, amount: str, stored: str) -> None:
    assert _judge((currency, amount, None)) == [(stored, [])]


@pytest.mark.parametrize(
    ("currency", "amount"),
    [("USD", "0.0050"), ("JPY", "100.5"), ("BHD", "1.0001"), ("USD", "10.001000")],
)
def test_a_digit_beyond_the_minor_unit_is_still_rejected(currency: str, amount: str) -> None:
    assert _judge((currency, amount, None)) == [(None, [FINER])]


def test_zero_and_huge_amounts_stay_rejected_however_padded() -> None:
    judged = _judge(("USD", "0.000", None), ("USD", "0" + "9" * 25 + ".00", None))
    assert judged[0][0] is None
    assert "amount: not a plain decimal greater than zero" in judged[0][1]
    assert judged[1] == (None, ["amount: more than 24 digits before the point"])


# --- amountMinor --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "minor", "stored"),
    [
        ("JPY", "150", "150"),
        ("USD", "150", "1.50"),
        ("USD", "1", "0.01"),
        ("USD", "007", "0.07"),
        ("USD", "150.0", "1.50"),  # a JSON serializer's whole number
        ("JPY", "150.000", "150"),
        ("BHD", "1", "0.001"),
        ("EUR", "123456789012345678", "1234567890123456.78"),
    ],
)
def test_amount_minor_is_divided_by_the_currency_exponent(
    currency: str, minor: str, stored: str
) -> None:
    assert _judge((currency, None, minor)) == [(stored, [])]


@pytest.mark.parametrize(
    "minor", ["0", "000", "0.0", "-150", "1.5", "150.01", "1e3", "abc", "١٥٠", "+150", ".5", "5."]
)
def test_amount_minor_must_be_a_whole_number_greater_than_zero(minor: str) -> None:
    assert _judge(("USD", None, minor)) == [(None, [NOT_WHOLE])]


def test_amount_minor_of_a_currency_without_minor_unit_is_rejected() -> None:
    assert _judge(("XAU", None, "150")) == [(None, [NO_UNIT])]


def test_amount_and_amount_minor_must_agree() -> None:
    judged = _judge(
        ("USD", "1.50", "150"),
        ("USD", "1.500", "00150"),
        ("USD", "1.50", "151"),
        ("JPY", "150", "15000"),
    )
    assert judged[0] == ("1.50", [])
    assert judged[1] == ("1.50", [])
    assert judged[2] == (None, [DISAGREE])
    assert judged[3] == (None, [DISAGREE])


def test_neither_amount_nor_amount_minor_is_an_empty_amount() -> None:
    assert _judge(("USD", None, None)) == [
        (None, ["amount: not a plain decimal greater than zero"])
    ]


# --- the rule over many cases -------------------------------------------------------------------

CURRENCIES = ["USD", "JPY", "BHD", "EUR", "CLF", "KWD", "XAU"]


@settings(max_examples=300, deadline=None)
@given(
    currency=st.sampled_from(CURRENCIES),
    minor=st.integers(min_value=1, max_value=10**30),
    leading=st.integers(min_value=0, max_value=5),
    trailing=st.integers(min_value=0, max_value=20),
    extra=st.integers(min_value=1, max_value=9),
)
def test_value_not_spelling_decides(
    currency: str, minor: int, leading: int, trailing: int, extra: int
) -> None:
    """Any spelling of a whole number of minor units normalizes to one text, equal to what
    amountMinor gives; a non-zero digit past the minor unit never normalizes."""
    exponent = minor_units_table()[currency]
    places = 4 if exponent is None else exponent
    value = Decimal(minor).scaleb(-places, EXACT)
    text = "0" * leading + format(value, f".{places}f")
    if trailing:
        text += ("" if "." in text else ".") + "0" * trailing
    frame = pd.Series([text], dtype="string[pyarrow]")
    code = pd.Series([currency], dtype="string[pyarrow]")
    stored = amounts.normalized(frame, code)[0]
    assert Decimal(stored) == value
    if exponent is not None:
        assert stored == amounts.from_minor_units(pd.Series([str(minor)], dtype="string"), code)[0]
        assert len(stored.partition(".")[2]) == exponent
        exact = format(value, f".{exponent}f")
        finer = exact + ("" if exponent else ".") + "0" * trailing + str(extra)
        finer_frame = pd.Series([finer], dtype="string[pyarrow]")
        assert amounts.significant_fraction_digits(finer_frame)[0] > exponent
        assert amounts.normalized(finer_frame, code)[0] == finer
    assert not stored.startswith("0") or stored.startswith("0.")


# --- end to end: re-exports that only spell differently -----------------------------------------


def _write(path: Path, rows: list[dict[str, str | None]]) -> Path:
    columns = [*CANONICAL_FIELDS, "amountMinor"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (v or "") for k, v in row.items() if k in columns} for row in rows)
    return path


def _ledger(url: str) -> tuple[dict[str, Decimal], int, int, int]:
    with psycopg.connect(url) as conn:
        assert_ledger_invariants(conn)
        posted = dict(conn.execute("SELECT reference_id, amount FROM ledger_entries").fetchall())
        conflicts = conn.execute("SELECT count(*) FROM ledger_backfill_conflicts").fetchone()[0]
        duplicates = conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0]
        rejects = conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0]
    return posted, conflicts, duplicates, rejects


def _reconciles(cli: Cli) -> None:
    markdown = max((cli.reports / "reconciliation").glob("*.md"), key=lambda p: p.stat().st_mtime)
    assert markdown.read_text().startswith("# Reconciliation: RECONCILES"), markdown.read_text()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            {"A": ("USD", "10.00", None), "B": ("JPY", "1500", None), "C": ("USD", None, "150")},
            {
                "A": ("USD", "10.000", None),
                "B": ("JPY", "1500.00", None),
                "C": ("USD", "1.50", None),
            },
        ),
        (
            {
                "A": ("USD", "10.000", None),
                "B": ("JPY", "1500.00", None),
                "C": ("USD", "1.5", None),
            },
            {"A": ("USD", "10.00", None), "B": ("JPY", "1500", None), "C": ("USD", None, "150")},
        ),
    ],
    ids=["padded-later", "padded-first"],
)
def test_a_re_export_that_only_spells_amounts_differently_posts_nothing_new(
    tmp_path: Path,
    backfill_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    first: dict,
    second: dict,
) -> None:
    accounts = write_accounts(tmp_path / "accounts.csv", ACCOUNTS)
    source = tmp_path / "export" / "ledger.csv"
    source.parent.mkdir()

    def rows(spec: dict) -> list[dict]:
        return [
            {**_row(0, c, a, m), "referenceId": ref, "timestampUtc": f"2024-01-01T10:0{i}:00Z"}
            for i, (ref, (c, a, m)) in enumerate(sorted(spec.items()))
        ]

    cli = Cli(tmp_path, backfill_env, monkeypatch, _write(source, rows(first)), accounts)
    ok(cli.materialize())
    expected = {"A": Decimal("10.00"), "B": Decimal("1500"), "C": Decimal("1.50")}
    posted, conflicts, _, rejects = _ledger(database_url)
    assert posted == expected and str(posted["A"]) == "10.00" and str(posted["B"]) == "1500"
    assert (conflicts, rejects) == (0, 0)
    _reconciles(cli)

    # The same source, re-exported with other spellings: the same rows, already posted.
    _write(source, rows(second))
    ok(cli.materialize())
    posted, conflicts, _, rejects = _ledger(database_url)
    assert posted == expected
    assert (conflicts, rejects) == (0, 0)
    _reconciles(cli)

    # Another system's export of the same payments, spelled the second way: duplicates.
    other = _write(tmp_path / "other.csv", rows(second))
    cli = Cli(tmp_path, backfill_env, monkeypatch, other, accounts)
    ok(cli.materialize())
    posted, conflicts, duplicates, rejects = _ledger(database_url)
    assert posted == expected
    assert (conflicts, rejects) == (0, 0)
    assert duplicates >= 3
    _reconciles(cli)


# --- the API: JSON numbers and strings ----------------------------------------------------------


def test_api_amounts_and_minor_units_as_json_numbers_and_strings(tmp_path: Path) -> None:
    """What an API serializer writes (`1500.0`, `150`, `"0150"`) is judged by value."""
    entries = [
        {"id": 1, "amountMinor": 150, "currencyCode": "USD"},
        {"id": 2, "amountMinor": 150.0, "currencyCode": "JPY"},
        {"id": 3, "amountMinor": "0150", "currencyCode": "BHD"},
        {"id": 4, "amount": 1500.0, "currencyCode": "JPY"},
        {"id": 5, "amount": 10.000, "amountMinor": 1000, "currencyCode": "USD"},
        {"id": 6, "amount": 10.01, "amountMinor": 1000, "currencyCode": "USD"},
        {"id": 7, "amountMinor": -150, "currencyCode": "USD"},
        {"id": 8, "amount": 0.0050, "currencyCode": "USD"},
    ]
    for item in entries:
        debit, credit = PAIRS[str(item["currencyCode"])]
        item.update(
            debitAccountId=debit,
            creditAccountId=credit,
            referenceId=f"API-{item['id']}",
            transactionType="T",
            timestampUtc="2024-01-05T01:00:00Z",
        )
    # Written by hand, not json.dumps: a Python float would not keep `10.000` or `150.0`.
    body = json.dumps({"entries": entries, "next_cursor": None})
    body = body.replace('"amount": 10.0,', '"amount": 10.000,').replace("0.005,", "0.0050,")
    with LedgerApiServer(token="t") as server:
        server.stick(page_key("entries", "2024-01-05", 1), malformed(body.encode()))
        source = ApiSource(base_url=server.url, token="t", page_size=10, retry_delay_ms=20)
        result = source.extract(["2024-01-05"], tmp_path)
    staged = staged_frame(pq.read_table(result.staged["2024-01-05"]))
    valid, rejects = split(transform(staged, RULES))
    stored = dict(zip(valid["reference_id"], valid["amount"], strict=True))
    assert stored == {
        "API-1": "1.50",
        "API-2": "150",
        "API-3": "0.150",
        "API-4": "1500",
        "API-5": "10.00",
    }
    reasons = dict(zip(rejects["source_row_id"], rejects["reasons"], strict=True))
    assert list(reasons[6]) == [DISAGREE]
    assert list(reasons[7]) == [NOT_WHOLE]
    assert list(reasons[8]) == [FINER]


def _oracle(text: str, currency: str) -> str:
    """`normalized` for one value, the slow way: Decimal, exact."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) or Decimal(text) == 0:
        return text
    exponent = minor_units_table().get(currency, -2)
    value = Decimal(text)
    if exponent is None:
        return format(value.normalize(EXACT), "f")
    if exponent == -2 or value != value.quantize(Decimal(1).scaleb(-exponent), context=EXACT):
        return text
    return format(value.quantize(Decimal(1).scaleb(-exponent), context=EXACT), "f")


@settings(max_examples=1000, deadline=None)
@given(
    values=st.lists(
        st.tuples(
            st.text(alphabet="0123456789.0a", max_size=30),
            st.sampled_from([*CURRENCIES, "ZZZ", "XTS"]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_normalized_equals_a_decimal_oracle_on_any_text(values: list[tuple[str, str]]) -> None:
    texts = pd.Series([t for t, _ in values], dtype="string[pyarrow]")
    codes = pd.Series([c for _, c in values], dtype="string[pyarrow]")
    assert list(amounts.normalized(texts, codes)) == [_oracle(t, c) for t, c in values]


def test_amount_minor_too_large_is_rejected_by_its_own_name() -> None:
    huge = "amountMinor: more than 24 digits before the point in major units"
    assert _judge(("USD", None, "1" + "0" * 30)) == [(None, [huge])]
    assert _judge(("USD", None, "9" * 26)) == [("9" * 24 + ".99", [])]  # the largest that fits
