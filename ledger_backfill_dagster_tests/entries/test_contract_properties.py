"""Property tests of the contract: for any mix of valid and invalid rows, exactly the valid ones
are posted (with the balances an independent Decimal computation expects), every row is
accounted for (read = posted + duplicates + conflicts + rejected) and the ledger invariants hold.

Each example writes a CSV and runs the real stages on it (CSV source, transform, validate,
quarantine, batch posting) against a fresh PostgreSQL database cloned from a migrated template.
The stages are called directly rather than through a Dagster run, which costs seconds per run;
the Dagster path is covered by the corpus test.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.entries.validation import split
from ledger_backfill_dagster.ledger.accounts import Account, account_currencies, load_accounts
from ledger_backfill_dagster.ledger.posting import PartitionPlan, PostingOptions, post_partition
from ledger_backfill_dagster.ledger.reconcile import reconcile
from ledger_backfill_dagster.ledger.rejects import raw_rows, replace_rejects
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.stage_store import StageStore
from ledger_backfill_dagster.sources.csv_source import CsvSource
from ledger_backfill_dagster_tests.conftest import _url_for
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants

DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
ACCOUNTS = {
    "A1": "USD",
    "A2": "USD",
    "A3": "USD",
    "E1": "EUR",
    "E2": "EUR",
    "J1": "JPY",
    "J2": "JPY",
    "B1": "BHD",
    "B2": "BHD",
}
PLACES = {"USD": 2, "EUR": 2, "JPY": 0, "BHD": 3}
BY_CURRENCY: dict[str, list[str]] = defaultdict(list)
for _account, _currency in ACCOUNTS.items():
    BY_CURRENCY[_currency].append(_account)

# Free text as exports carry it: any character but NUL (a reject of its own) and lone surrogates.
TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


@dataclass
class Row:
    fields: dict[str, str]
    valid: bool
    debit: str = ""
    credit: str = ""
    amount: Decimal = Decimal(0)
    credit_amount: Decimal = Decimal(0)
    malformed: bool = False  # written as a line with the wrong number of fields
    repeat: str = ""  # "duplicate" or "conflict": a valid row's reference again


def _amount_text(draw, value: Decimal, places: int) -> str:
    text = format(value, "f")
    if places and draw(st.booleans()):  # fewer decimals than allowed are fine: "10.5" for USD
        text = text.rstrip("0").rstrip(".") or "0"
    return text


@st.composite
def valid_rows(draw) -> Row:
    crossing = draw(st.booleans())
    if crossing:
        currency, other = draw(st.permutations(sorted(PLACES)).map(lambda c: c[:2]))
        debit = draw(st.sampled_from(BY_CURRENCY[currency]))
        credit = draw(st.sampled_from(BY_CURRENCY[other]))
    else:
        currency = draw(st.sampled_from(sorted(PLACES)))
        debit, credit = draw(st.permutations(BY_CURRENCY[currency]).map(lambda a: a[:2]))
    places = PLACES[currency]
    amount = Decimal(draw(st.integers(1, 10**12))).scaleb(-places)
    credit_amount = amount
    fx = ""
    if crossing:
        rate = Decimal(draw(st.integers(1, 10**8))).scaleb(-draw(st.integers(0, 6)))
        credit_places = PLACES[ACCOUNTS[credit]]
        credit_amount = (amount * rate).quantize(
            Decimal(1).scaleb(-credit_places), rounding=ROUND_HALF_EVEN
        )
        if credit_amount <= 0:  # would convert to nothing: make the rate large enough
            rate = Decimal(10) ** (credit_places + 8)
            credit_amount = (amount * rate).quantize(Decimal(1).scaleb(-credit_places))
        fx = format(rate, "f")
    moment = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(
        seconds=draw(st.integers(0, 3 * 86400 - 1))
    )
    offset = draw(st.sampled_from([0, 330, -300, 60]))
    stamp = moment.astimezone(timezone(timedelta(minutes=offset))).isoformat()
    if offset == 0 and draw(st.booleans()):
        stamp = stamp.replace("+00:00", "Z")
    metadata = draw(
        st.one_of(
            st.just(""),
            st.dictionaries(
                st.text(TEXT, max_size=6),
                st.one_of(st.integers(), st.text(TEXT, max_size=10), st.booleans(), st.none()),
                max_size=3,
            ).map(json.dumps),
        )
    )
    pad = draw(st.sampled_from(["", " ", "  "]))
    fields = {
        "ledgerId": draw(st.sampled_from(["", "MASTER", "SOVEREIGN"])),
        "debitAccountId": pad + debit + pad,
        "creditAccountId": credit,
        "amount": pad + _amount_text(draw, amount, places) + pad,
        "currencyCode": draw(st.sampled_from([currency, currency.lower(), f" {currency} "])),
        "assetType": draw(st.sampled_from(["", "fiat", "CBDC", "Commodity", " security "])),
        "transactionType": draw(st.text(TEXT, min_size=1, max_size=12).filter(str.strip)),
        "referenceId": "",  # made unique when the file is written
        "timestampUtc": stamp,
        "fxRate": fx,
        "metadata": metadata,
    }
    return Row(fields, True, debit, credit, amount, credit_amount)


def _mutations(row: Row) -> list[tuple[str, str]]:
    """(field, value) changes each of which alone makes the row a reject."""
    f = row.fields
    changes = [
        ("amount", "-" + f["amount"].strip()),
        ("amount", f["amount"].strip() + "e0"),
        ("amount", "0"),
        ("amount", "NaN"),
        ("amount", ""),
        ("amount", "1." + "1" * (PLACES[ACCOUNTS[row.debit]] + 1)),
        ("currencyCode", "XTS"),
        ("currencyCode", "QQQ"),
        ("debitAccountId", "NOPE"),
        ("creditAccountId", row.debit),
        ("assetType", "crypto"),
        ("transactionType", "   "),
        ("transactionType", "PAY\x00"),
        ("timestampUtc", ""),
        ("timestampUtc", "not a time"),
        ("timestampUtc", "2023-12-31T12:00:00Z"),
        ("metadata", "[1]"),
        ("metadata", "{bad"),
        ("metadata", '{"a": NaN}'),
    ]
    if f["fxRate"]:
        changes += [("fxRate", ""), ("fxRate", "0"), ("fxRate", "-" + f["fxRate"])]
    else:
        changes += [("fxRate", "1.5")]
    return changes


@st.composite
def invalid_rows(draw) -> Row:
    row = draw(valid_rows())
    if draw(st.integers(0, 9)) == 0:
        return Row(row.fields, False, malformed=True)
    field, value = draw(st.sampled_from(_mutations(row)))
    return Row({**row.fields, field: value}, False)


def write_csv(path: Path, rows: list[Row]) -> list[int]:
    """Write the rows; return the line each one starts on."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CANONICAL_FIELDS)
    lines = []
    line = 2
    for row in rows:
        values = [row.fields[f] for f in CANONICAL_FIELDS]
        if row.malformed:
            values = values[:-1]
        start = buffer.tell()
        writer.writerow(values)
        lines.append(line)
        line += buffer.getvalue()[start:].count("\n")
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return lines


@st.composite
def mixes(draw) -> list[Row]:
    """Valid and invalid rows, each with its own reference id (any text after a unique prefix),
    then a few repeats of valid rows: identical (a duplicate) or with another amount (a
    conflict), later in the file so the original comes first."""
    rows = draw(st.lists(st.one_of(valid_rows(), invalid_rows()), min_size=1, max_size=25))
    for n, row in enumerate(rows):
        row.fields["referenceId"] = f"P-{n}-" + draw(st.text(TEXT, max_size=4))
    originals = [row for row in rows if row.valid]
    if originals:
        for original, changed in draw(
            st.lists(st.tuples(st.sampled_from(originals), st.booleans()), max_size=3)
        ):
            fields = dict(original.fields)
            if changed:
                fields["amount"] = "1" + fields["amount"].strip()
            rows.append(Row(fields, False, repeat="conflict" if changed else "duplicate"))
    return rows


def run_stages(database_url: str, csv_path: Path, work: Path) -> dict[str, int]:
    """What the five assets do, minus Dagster: extract, transform, validate, quarantine, post."""
    db = LedgerDatabase(database_url=database_url)
    source = CsvSource(spec=str(csv_path), start_date=DAYS[0])
    store = StageStore(work / "stages")
    result = source.extract(list(DAYS), store.root)
    with db.connection() as conn:
        replace_rejects(
            conn,
            source_id=source.source_id,
            source_type="CSV",
            partition_key=None,
            stage="extract",
            rejects=result.unpartitioned_rejects,
            run_id="property",
        )
        load_accounts(conn, [Account(a, c, True, "customer") for a, c in ACCOUNTS.items()])
        rules = TransformRules(
            default_ledger_id="MASTER", account_currencies=account_currencies(conn)
        )
    for key in DAYS:
        store.write_pointer(source.source_key, key, result.staged.get(key), 0)
        staged = store.read_extracted(source.source_key, key)
        valid, rejects = split(transform(staged, rules))
        if len(rejects):
            rejects = raw_rows(staged, rejects["source_row_id"]).merge(rejects, on="source_row_id")
            rejects["raw_text"] = None
        with db.connection() as conn:
            replace_rejects(
                conn,
                source_id=source.source_id,
                source_type="CSV",
                partition_key=key,
                stage="validate",
                rejects=rejects,
                run_id="property",
            )
        plan = PartitionPlan(source.source_id, "CSV", key, "property", valid, len(rejects))
        post_partition(db.connect, plan, PostingOptions(batch_size=7, retry_delay_ms=10))
    with db.connection() as conn:
        report = reconcile(
            conn, source.source_id, result.rows_by_partition, len(result.unpartitioned_rejects)
        )
    return {
        "read": result.rows_read,
        "report_read": report.rows_read,
        "posted": report.total("posted"),
        "duplicates": report.total("duplicates"),
        "conflicts": report.total("conflicts"),
        "rejected": report.total("rejected") + report.unpartitioned_rejects,
        "unaccounted": sum(p.unaccounted for p in report.partitions),
    }


def _lines(conn: psycopg.Connection, table: str) -> set[int]:
    query = sql.SQL("SELECT line_number FROM {}").format(sql.Identifier(table))
    return {row[0] for row in conn.execute(query)}


@pytest.fixture(scope="module")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A migrated database that each example clones (CREATE DATABASE … TEMPLATE), far faster
    than migrating a fresh one."""
    name = f"lbt_tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        LedgerDatabase(database_url=_url_for(pg_admin_url, name)).migrate()
        yield name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class _Clone:
    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url = admin_url
        self.template = template
        self.name = f"lbt_{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(self.name), sql.Identifier(self.template)
                )
            )
        return _url_for(self.admin_url, self.name)

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=mixes())
def test_exactly_the_valid_rows_are_posted(rows: list[Row], pg_admin_url, template_database):
    with _Clone(pg_admin_url, template_database) as url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines = write_csv(work / "mix.csv", rows)
        counts = run_stages(url, work / "mix.csv", work)
        with psycopg.connect(url) as conn:
            # One file: source_row_id is the line number.
            posted = dict(
                conn.execute("SELECT source_row_id, reference_id FROM ledger_entries").fetchall()
            )
            rejected = _lines(conn, "ledger_backfill_rejects")
            duplicates = _lines(conn, "ledger_backfill_duplicates")
            conflicts = _lines(conn, "ledger_backfill_conflicts")
            balances = dict(conn.execute("SELECT id, balance FROM bank_accounts").fetchall())
            assert_ledger_invariants(conn)

    by_line = dict(zip(lines, rows, strict=True))
    valid_lines = {line for line, row in by_line.items() if row.valid}
    assert set(posted) == valid_lines
    assert {posted[line] for line in valid_lines} == {
        row.fields["referenceId"] for row in rows if row.valid
    }
    assert duplicates == {line for line, row in by_line.items() if row.repeat == "duplicate"}
    assert conflicts == {line for line, row in by_line.items() if row.repeat == "conflict"}
    assert rejected == {line for line, row in by_line.items() if not row.valid and not row.repeat}
    assert counts["read"] == counts["report_read"] == len(rows)
    assert counts["read"] == (
        counts["posted"] + counts["duplicates"] + counts["conflicts"] + counts["rejected"]
    )
    assert counts["unaccounted"] == 0

    expected: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        if row.valid:
            expected[row.debit] += row.amount
            expected[row.credit] -= row.credit_amount
    assert {a: b for a, b in balances.items() if b} == {a: b for a, b in expected.items() if b}
