"""DATABASE source, issue 19: amounts and rates read exactly from every column type a legacy
ledger table uses, and binary floats refused before any row is read.

Each backfill test builds a legacy table in a real second database on the same server (as
`sources/test_database.py` does), fills it from an exact, seeded generator (USD, EUR, JPY; every
twentieth entry crosses currencies with an 18-place rate; a few fixed rows such as the issue's
`56722.71`), runs all five assets with a real Dagster materialization, and then compares the
ledger with what the legacy table itself says, computed in SQL in the source database: every
balance (a debit adds `amount`, a credit subtracts the credit side, `amount × fx_rate` rounded
half-even to the credit currency's places), the control totals per currency and the row count.
Every entry's stored amount and credit amount is also compared, as text, with the generator's.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from ledger_backfill_dagster.sources.database import DatabaseSource, DatabaseSourceError
from ledger_backfill_dagster_tests.support.hardening_support import write_accounts
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    check_evaluations,
    failure_text,
    materialize_range,
)
from ledger_backfill_dagster_tests.support.legacy_source import LEGACY_TABLE, use_database_source

CURRENCY_PLACES = {"USD": 2, "EUR": 2, "JPY": 0}
CUSTOMERS_PER_CURRENCY = 8
# Around real rates, so that converted amounts look like real ones; each row's rate is the base
# times a factor of six decimals, an exact decimal of up to 11 places.
FX_BASE = {
    ("USD", "EUR"): Decimal("0.92"),
    ("EUR", "USD"): Decimal("1.09"),
    ("USD", "JPY"): Decimal("148.5"),
    ("JPY", "USD"): Decimal("0.0067"),
    ("EUR", "JPY"): Decimal("161.2"),
    ("JPY", "EUR"): Decimal("0.0062"),
}
FX_EVERY = 20
ORIGIN = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Entry:
    """One legacy row; the amount is kept in the currency's minor units, so it is exact."""

    reference: str
    debit: str
    credit: str
    currency: str
    minor: int
    at: datetime
    fx_rate: Decimal | None = None

    @property
    def places(self) -> int:
        return CURRENCY_PLACES[self.currency]

    @property
    def amount(self) -> Decimal:
        """The amount at the currency's places: what the ledger must store (`1.50`, `150`)."""
        return Decimal(self.minor).scaleb(-self.places)

    @property
    def credit_currency(self) -> str:
        return self.credit.rsplit("-", 1)[1]

    @property
    def credit_amount(self) -> Decimal:
        if self.fx_rate is None:
            return self.amount
        quantum = Decimal(1).scaleb(-CURRENCY_PLACES[self.credit_currency])
        with localcontext() as ctx:
            ctx.prec = 60
            return (self.amount * self.fx_rate).quantize(quantum, rounding=ROUND_HALF_EVEN)


def account(currency: str, n: int | None = None) -> str:
    return f"CLR-{currency}" if n is None else f"ACC-{n:02d}-{currency}"


def accounts_of(currency: str) -> list[str]:
    return [account(currency)] + [account(currency, n) for n in range(CUSTOMERS_PER_CURRENCY)]


def day(n: int, hour: int) -> datetime:
    return ORIGIN + timedelta(days=n, hours=hour)


# Rows every table gets (where its currencies and column type can hold them).
FIXED_ENTRIES = (
    Entry("FIX-USD-150", account("USD", 0), account("USD"), "USD", 150, day(0, 1)),
    Entry("FIX-JPY-150", account("JPY", 0), account("JPY"), "JPY", 150, day(0, 2)),
    Entry("FIX-USD-ISSUE", account("USD", 1), account("USD"), "USD", 5_672_271, day(1, 3)),
    Entry("FIX-EUR-1CENT", account("EUR", 1), account("EUR"), "EUR", 1, day(1, 4)),
    # Ties of the credit side's half-even rounding: JPY 2.5 → 2 and 7.5 → 8.
    Entry(
        "FIX-EUR-TIE-2", account("EUR", 2), account("JPY"), "EUR", 100, day(2, 5), Decimal("2.5")
    ),
    Entry(
        "FIX-EUR-TIE-8", account("EUR", 3), account("JPY"), "EUR", 300, day(2, 6), Decimal("2.5")
    ),
)


def legacy_entries(
    count: int, days: int, currencies: tuple[str, ...], *, whole_units: bool = False
) -> list[Entry]:
    """`count` generated entries spread evenly over `days` UTC days, plus the fixed ones; the
    same arguments always give the same entries."""
    rng = random.Random(19)
    step = days * 86400 / count
    last_hour = ORIGIN + timedelta(days=days, hours=-1)  # fixed rows stay inside the range
    entries = [
        replace(e, at=min(e.at, last_hour))
        for e in FIXED_ENTRIES
        if {e.currency, e.credit_currency} <= set(currencies)
        and (not whole_units or e.minor % 10**e.places == 0)
    ]
    for n in range(count):
        currency = currencies[rng.randrange(len(currencies))]
        unit = 10 ** CURRENCY_PLACES[currency]
        minor = rng.randrange(100, 1_000_000_000)
        if whole_units:
            minor = max(unit, minor - minor % unit)
        credit_currency, rate = currency, None
        if n % FX_EVERY == 0 and len(currencies) > 1:
            credit_currency = rng.choice([c for c in currencies if c != currency])
            factor = Decimal(rng.randrange(900_000, 1_100_001)).scaleb(-6)
            rate = FX_BASE[(currency, credit_currency)] * factor
        debit = rng.choice(accounts_of(currency))
        credit = rng.choice([a for a in accounts_of(credit_currency) if a != debit])
        at = ORIGIN + timedelta(seconds=int(n * step))
        entries.append(Entry(f"L19-{n:07d}", debit, credit, currency, minor, at, rate))
    return entries


@dataclass(frozen=True)
class Variant:
    """A legacy table whose amount is held in one column type."""

    amount_column: str  # its DDL, e.g. "amount NUMERIC(38,18)"
    value: Callable[[Entry], object]  # what the legacy system wrote in it
    amount_sql: str  # the amount as exact NUMERIC, in SQL over `l` (legacy) and `p` (places)
    fx_rate_type: str = "NUMERIC(38,18)"
    fx_value: Callable[[Decimal], object] = lambda rate: rate

    @property
    def amount_name(self) -> str:
        return self.amount_column.split()[0]


NUMERIC_38_18 = Variant("amount NUMERIC(38,18)", lambda e: e.amount, "l.amount")
MONEY = Variant("amount money", lambda e: e.amount, "l.amount::numeric")
MINOR_UNITS = Variant(
    "amount_minor BIGINT", lambda e: e.minor, "l.amount_minor * 10::numeric ^ (-p.places)"
)
WHOLE_UNITS = Variant("amount INTEGER", lambda e: e.minor // 10**e.places, "l.amount::numeric")
# An export that formats every amount with four places (SQL Server's money and decimal(19,4)
# print `1234.5000`; JPY `150.0000`), rates with twelve.
PADDED_TEXT = Variant(
    "amount TEXT",
    lambda e: f"{e.amount:.4f}",
    "l.amount::numeric",
    fx_rate_type="TEXT",
    fx_value=lambda rate: f"{rate:.12f}",
)

SOURCE_SCHEMA = """
CREATE TABLE legacy_accounts (id TEXT PRIMARY KEY, currency_code TEXT NOT NULL);
CREATE TABLE currency_places (code TEXT PRIMARY KEY, places INT NOT NULL);
INSERT INTO currency_places VALUES ('USD', 2), ('EUR', 2), ('JPY', 0);
-- Half-even rounding of a positive amount to `places`, written here independently of the
-- pipeline's Python (PostgreSQL's round() rounds half away from zero).
CREATE FUNCTION half_even(v NUMERIC, places INT) RETURNS NUMERIC LANGUAGE sql IMMUTABLE AS $$
    SELECT (f + CASE WHEN d > 0.5 OR (d = 0.5 AND mod(f, 2) = 1) THEN 1 ELSE 0 END)
           / 10::numeric ^ places
      FROM (SELECT floor(v * 10::numeric ^ places) AS f,
                   v * 10::numeric ^ places - floor(v * 10::numeric ^ places) AS d) AS parts
$$;
"""


@pytest.fixture
def database_source_env(backfill_env, source_url, monkeypatch, tmp_path):
    """The backfill reads `ledger_entries_legacy` of the source database; the chart of accounts
    (every account of the three currencies) is ACCOUNTS_FILE."""
    accounts = write_accounts(
        tmp_path / "accounts.csv", {a: c for c in CURRENCY_PLACES for a in accounts_of(c)}
    )
    settings = {
        "BACKFILL_SOURCE_URL": source_url,
        "BACKFILL_SOURCE_TABLE": "ledger_entries_legacy",
        "BACKFILL_SOURCE_PAGE_SIZE": "5000",
        "BATCH_SIZE": "5000",
        "ACCOUNTS_FILE": str(accounts),
    }
    return use_database_source(monkeypatch, backfill_env, settings)


def load_legacy(url: str, variant: Variant, entries: list[Entry]) -> None:
    """The legacy table and the source's own chart of accounts, filled through COPY."""
    ddl = LEGACY_TABLE.format(
        amount_column=variant.amount_column, fx_rate_type=variant.fx_rate_type
    )
    columns = (
        f"ledger_id, debit_account_id, credit_account_id, {variant.amount_name}, currency_code,"
        " asset_type, transaction_type, reference_id, timestamp_utc, fx_rate"
    )
    with psycopg.connect(url) as conn:
        conn.execute(SOURCE_SCHEMA)
        conn.execute(ddl)
        with conn.cursor().copy("COPY legacy_accounts (id, currency_code) FROM STDIN") as copy:
            for currency in CURRENCY_PLACES:
                for name in accounts_of(currency):
                    copy.write_row((name, currency))
        with conn.cursor().copy(f"COPY ledger_entries_legacy ({columns}) FROM STDIN") as copy:
            for e in entries:
                rate = None if e.fx_rate is None else variant.fx_value(e.fx_rate)
                copy.write_row(
                    (
                        "MASTER",
                        e.debit,
                        e.credit,
                        variant.value(e),
                        e.currency,
                        "fiat",
                        "TRANSFER",
                        e.reference,
                        e.at,
                        rate,
                    )
                )
        conn.execute("ANALYZE ledger_entries_legacy")


# The legacy table's entries with their amount as exact NUMERIC and the credit currency's places.
MOVEMENTS = """
    WITH e AS (
        SELECT l.debit_account_id AS debit, l.credit_account_id AS credit,
               l.currency_code AS currency, {amount} AS amount,
               l.fx_rate::numeric AS fx_rate, cp.places AS credit_places
          FROM ledger_entries_legacy l
          JOIN currency_places p ON p.code = l.currency_code
          JOIN legacy_accounts ca ON ca.id = l.credit_account_id
          JOIN currency_places cp ON cp.code = ca.currency_code
    )
"""
SUM_PER_CURRENCY = "SELECT currency, sum(amount) FROM e GROUP BY 1"
# The sign convention of sql/001_ledger_core.sql: a debit adds `amount` to the debit account, a
# credit subtracts the credit side (`amount × fx_rate`, half-even, when the entry converts).
BALANCE_PER_ACCOUNT = """
    SELECT account, sum(delta) FROM (
        SELECT debit AS account, amount AS delta FROM e
        UNION ALL
        SELECT credit, -CASE WHEN fx_rate IS NULL THEN amount
                             ELSE half_even(amount * fx_rate, credit_places) END
          FROM e) AS m
     GROUP BY 1 HAVING sum(delta) <> 0
"""


def source_figures(url: str, variant: Variant) -> dict[str, object]:
    """What the legacy table itself says, in SQL: row count, the sum per currency, and every
    account's balance (debits add the amount, credits subtract the credit side)."""
    movements = sql.SQL(MOVEMENTS).format(amount=sql.SQL(variant.amount_sql))
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_entries_legacy").fetchone()[0]
        sums = dict(conn.execute(movements + sql.SQL(SUM_PER_CURRENCY)))
        balances = dict(conn.execute(movements + sql.SQL(BALANCE_PER_ACCOUNT)))
    return {"count": count, "sums": sums, "balances": balances}


def ledger_figures(url: str) -> dict[str, object]:
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
        sums = dict(
            conn.execute("SELECT currency_code, sum(amount) FROM ledger_entries GROUP BY 1")
        )
        balances = dict(conn.execute("SELECT id, balance FROM bank_accounts WHERE balance <> 0"))
    return {"count": count, "sums": sums, "balances": balances}


def stored_entries(url: str) -> dict[str, tuple[str, str, str, str]]:
    """Each posted entry's amount and credit side as the ledger stores them (text: the scale
    shows)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT reference_id, amount::text, currency_code, credit_amount::text,"
            " credit_currency_code FROM ledger_entries"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def expected_entries(entries: list[Entry]) -> dict[str, tuple[str, str, str, str]]:
    return {
        e.reference: (str(e.amount), e.currency, str(e.credit_amount), e.credit_currency)
        for e in entries
    }


def staged_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state").rglob("*.parquet"))


def staged_values(tmp_path: Path, column: str) -> dict[str, str | None]:
    """referenceId → the staged text of `column` (the raw value as the reader read it)."""
    table = pq.read_table(staged_files(tmp_path), columns=["referenceId", column])
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))


def backfill_and_compare(
    source_url: str, database_url: str, variant: Variant, entries: list[Entry], days: int
) -> float:
    """Backfill all of the legacy table through the five assets and prove the ledger equals it:
    zero rejects, every entry exact, balances, control totals, checks. Returns the seconds."""
    load_legacy(source_url, variant, entries)
    started = time.perf_counter()
    result = materialize_range("2024-01-01", f"2024-01-{days:02d}")
    seconds = time.perf_counter() - started
    assert result.success
    with psycopg.connect(database_url) as conn:
        rejects = conn.execute("SELECT reasons FROM ledger_backfill_rejects LIMIT 3").fetchall()
        assert rejects == []
        assert_ledger_invariants(conn)
    assert stored_entries(database_url) == expected_entries(entries)
    assert ledger_figures(database_url) == source_figures(source_url, variant)
    checks = check_evaluations(result)
    assert checks and all(checks.values()), checks
    report = result.asset_materializations_for_node("reconciliation_report")
    assert report and all(m.metadata["reconciles"].value for m in report)
    return seconds


def test_numeric_38_18_amounts_post_exactly(
    database_source_env, source_url, database_url, tmp_path
) -> None:
    """The issue's table: NUMERIC(38,18) amounts and rates, printed with 18 places by
    PostgreSQL, post by value at the currency's places; the raw text stays in the staged row."""
    entries = legacy_entries(12_000, 4, ("USD", "EUR", "JPY"))
    seconds = backfill_and_compare(source_url, database_url, NUMERIC_38_18, entries, days=4)
    print(f"NUMERIC(38,18): {len(entries)} rows over 4 days in {seconds:.1f} s")
    staged = staged_values(tmp_path, "amount")
    assert staged["FIX-USD-ISSUE"] == "56722.710000000000000000"
    assert staged["FIX-JPY-150"] == "150.000000000000000000"
    stored = stored_entries(database_url)
    assert stored["FIX-USD-ISSUE"][0] == "56722.71"
    assert stored["FIX-EUR-TIE-2"][2:] == ("2", "JPY")
    assert stored["FIX-EUR-TIE-8"][2:] == ("8", "JPY")


def test_money_amounts_are_read_as_their_value_not_the_locale_text(
    database_source_env, source_url, database_url, tmp_path
) -> None:
    """A `money` column prints in lc_monetary's format (`$56,722.71`, even in the C locale);
    the reader selects its numeric value. money has the locale's two places: USD and EUR."""
    entries = legacy_entries(10_000, 4, ("USD", "EUR"))
    seconds = backfill_and_compare(source_url, database_url, MONEY, entries, days=4)
    print(f"money: {len(entries)} rows over 4 days in {seconds:.1f} s")
    with psycopg.connect(source_url) as conn:
        as_text = conn.execute(
            "SELECT amount::text FROM ledger_entries_legacy WHERE reference_id = 'FIX-USD-ISSUE'"
        ).fetchone()[0]
    assert as_text == "$56,722.71"  # what `::text` would have staged
    staged = staged_values(tmp_path, "amount")
    assert staged["FIX-USD-ISSUE"] == "56722.71"
    assert all(re.fullmatch(r"\d+\.\d\d", v) for v in staged.values()), "not the value"
    assert stored_entries(database_url)["FIX-USD-150"][0] == "1.50"


def test_integer_minor_units_post_as_amounts(
    database_source_env, source_url, database_url, tmp_path
) -> None:
    """`amount_minor BIGINT` and no amount column: the snake_case layout maps it to
    amountMinor, and the amount is amount_minor / 10^exponent of the currency."""
    entries = legacy_entries(10_000, 4, ("USD", "EUR", "JPY"))
    seconds = backfill_and_compare(source_url, database_url, MINOR_UNITS, entries, days=4)
    print(f"amount_minor BIGINT: {len(entries)} rows over 4 days in {seconds:.1f} s")
    stored = stored_entries(database_url)
    assert stored["FIX-JPY-150"][:2] == ("150", "JPY")
    assert stored["FIX-USD-150"][:2] == ("1.50", "USD")
    assert stored["FIX-EUR-1CENT"][:2] == ("0.01", "EUR")
    assert staged_values(tmp_path, "amountMinor")["FIX-USD-150"] == "150"


@pytest.mark.parametrize("variant", [WHOLE_UNITS, PADDED_TEXT], ids=["integer", "text"])
def test_integer_and_padded_text_amounts_post_exactly(
    variant: Variant, database_source_env, source_url, database_url, tmp_path
) -> None:
    """An INTEGER column of whole units, and a TEXT column of plain decimals padded to four
    places (`1234.5000`, JPY `150.0000`) with rates padded to twelve."""
    entries = legacy_entries(2_000, 2, ("USD", "EUR", "JPY"), whole_units=variant is WHOLE_UNITS)
    backfill_and_compare(source_url, database_url, variant, entries, days=2)
    if variant is PADDED_TEXT:
        staged = staged_values(tmp_path, "amount")
        assert staged["FIX-USD-150"] == "1.5000"
        assert staged["FIX-JPY-150"] == "150.0000"
        assert stored_entries(database_url)["FIX-USD-ISSUE"][0] == "56722.71"


# -- floats are refused ---------------------------------------------------------------------------

FLOAT_AMOUNTS = Variant("amount DOUBLE PRECISION", lambda e: float(e.amount), "l.amount")
# The same table's NUMERIC amounts cast to real by the user's query; the tripwire divides by zero
# on the first row read, so the run must fail on the column types alone (the LIMIT 0 probe).
REAL_QUERY = (
    "SELECT id, ledger_id, debit_account_id, credit_account_id, amount::real AS amount,"
    " currency_code, asset_type, transaction_type, reference_id, timestamp_utc, fx_rate,"
    " 1 / (id - id) AS tripwire FROM ledger_entries_legacy"
)


@pytest.mark.parametrize(
    ("variant", "query", "type_name"),
    [(FLOAT_AMOUNTS, None, "double precision"), (NUMERIC_38_18, REAL_QUERY, "real")],
    ids=["double-precision-table", "real-through-query"],
)
def test_a_float_amount_column_fails_the_run_before_any_row_is_read(
    variant: Variant,
    query: str | None,
    type_name: str,
    database_source_env,
    source_url,
    database_url,
    tmp_path,
    monkeypatch,
) -> None:
    load_legacy(source_url, variant, legacy_entries(200, 1, ("USD", "EUR")))
    if query:
        monkeypatch.delenv("BACKFILL_SOURCE_TABLE")
        monkeypatch.setenv("BACKFILL_SOURCE_QUERY", query)
    result = materialize_range("2024-01-01", "2024-01-01", raise_on_error=False)
    assert not result.success
    said = failure_text(result)
    assert f"column 'amount' is {type_name} and feeds amount" in said, said
    assert "amount::numeric(20,2)" in said and "BACKFILL_SOURCE_QUERY" in said
    assert "division by zero" not in said
    assert staged_files(tmp_path) == []
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0] == 0


# -- the reader alone, one small table per column type ---------------------------------------------

DOMAINS = """
CREATE DOMAIN legacy_money AS money;
CREATE DOMAIN legacy_amount AS NUMERIC(38, 18);
CREATE DOMAIN legacy_positive_amount AS legacy_amount CHECK (VALUE > 0);
CREATE DOMAIN legacy_float AS double precision;
"""


SNAKE_KEY_FIELDS = {
    "debit_account_id": "debitAccountId",
    "credit_account_id": "creditAccountId",
    "currency_code": "currencyCode",
    "timestamp_utc": "timestampUtc",
}


def small_source(url: str, value_columns: str, values: str) -> DatabaseSource:
    """A one-row table `t` with the snake_case key fields and `value_columns`, read through a
    view whose tripwire column divides by zero if a row is ever read."""
    with psycopg.connect(url) as conn:
        conn.execute(DOMAINS)
        conn.execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, debit_account_id TEXT,"
            f" credit_account_id TEXT, currency_code TEXT, timestamp_utc TIMESTAMPTZ,"
            f" {value_columns})"
        )
        row = sql.SQL("INSERT INTO t VALUES (1, 'A', 'B', 'USD', '2024-01-01T10:00:00Z', {})")
        conn.execute(row.format(sql.SQL(values)))
        conn.execute("CREATE VIEW wired AS SELECT *, 1 / (id - id) AS tripwire FROM t")
    return DatabaseSource(url=url, table="t")


@pytest.mark.parametrize(
    ("column_type", "written", "staged"),
    [
        ("NUMERIC(38,18)", "56722.71", "56722.710000000000000000"),
        ("NUMERIC", "56722.71", "56722.71"),
        ("NUMERIC(19,4)", "56722.71", "56722.7100"),
        ("money", "56722.71", "56722.71"),
        ("legacy_money", "56722.71", "56722.71"),
        ("legacy_positive_amount", "56722.71", "56722.710000000000000000"),
        ("TEXT", "'56722.7100'", "56722.7100"),
        ("BIGINT", "56722", "56722"),
        ("SMALLINT", "5672", "5672"),
    ],
)
def test_each_exact_column_type_is_staged_as_its_value(
    column_type: str, written: str, staged: str, source_url: str, tmp_path: Path
) -> None:
    """Amount and rate columns of every exact type are staged as the value they hold; a float
    column that only goes to the metadata is kept there, as before."""
    source = small_source(
        source_url,
        f"amount {column_type}, fx_rate {column_type}, weight DOUBLE PRECISION",
        f"{written}, {written}, 0.1",
    )
    result = source.extract(["2024-01-01"], tmp_path)
    row = pq.read_table(result.staged["2024-01-01"]).to_pylist()[0]
    assert (row["amount"], row["fxRate"]) == (staged, staged)
    assert json.loads(row["extra_columns"]) == {"weight": "0.1"}
    is_money = column_type in ("money", "legacy_money")
    assert result.details.get("money_columns") == (["amount", "fx_rate"] if is_money else None)


@pytest.mark.parametrize(
    ("value_columns", "values", "column_map", "message"),
    [
        ("amount DOUBLE PRECISION", "1.5", None, "column 'amount' is double precision"),
        ("amount REAL", "1.5", None, "column 'amount' is real and feeds amount"),
        ("amount legacy_float", "1.5", None, "column 'amount' is double precision"),
        (
            "amount_minor DOUBLE PRECISION",
            "150",
            None,
            "column 'amount_minor' is double precision and feeds amountMinor",
        ),
        (
            "amount NUMERIC, fx_rate DOUBLE PRECISION",
            "1.5, 0.9",
            None,
            "column 'fx_rate' is double precision and feeds fxRate",
        ),
        (
            '"Betrag" REAL',
            "1.5",
            {"Betrag": "amount"},
            "column 'Betrag' is real and feeds amount: a binary floating-point column cannot "
            "carry an amount exactly (0.10 is stored as 0.1000000000000000055…), so no row was "
            "read. If you accept rounding its values, cast it in BACKFILL_SOURCE_QUERY, e.g. "
            'SELECT …, "Betrag"::numeric(20,2) AS "Betrag"',
        ),
    ],
    ids=["double", "real", "domain", "amount-minor", "fx-rate", "mapped"],
)
def test_float_columns_feeding_amounts_are_refused_before_any_row_is_read(
    value_columns: str,
    values: str,
    column_map: dict[str, str] | None,
    message: str,
    source_url: str,
    tmp_path: Path,
) -> None:
    small_source(source_url, value_columns, values)
    if column_map:  # a declared map names every field it feeds
        column_map = {**column_map, **SNAKE_KEY_FIELDS}
    wired = DatabaseSource(url=source_url, table="wired", column_map=column_map)
    with pytest.raises(DatabaseSourceError) as refused:
        wired.extract(["2024-01-01"], tmp_path / "stage")
    assert message in str(refused.value)
    assert list((tmp_path / "stage").rglob("*.parquet")) == []


@pytest.mark.parametrize(
    ("value_columns", "values", "column_map", "amount", "minor"),
    [
        # The docs' example: a map naming one column renames it in the snake_case layout.
        (
            "amount NUMERIC, cents BIGINT",
            "1.51, 150",
            {"cents": "amountMinor"},
            "1.51",
            "150",
        ),
        ("cents BIGINT", "150", {"cents": "amountMinor"}, None, "150"),
        ('"amountMinor" BIGINT', "150", None, None, "150"),
    ],
    ids=["beside-amount", "alone", "camel-case-column"],
)
def test_a_partial_column_map_renames_its_columns_never_folds_them_into_metadata(
    value_columns: str,
    values: str,
    column_map: dict[str, str] | None,
    amount: str | None,
    minor: str,
    source_url: str,
    tmp_path: Path,
) -> None:
    small_source(source_url, value_columns, values)
    source = DatabaseSource(url=source_url, table="t", column_map=column_map)
    result = source.extract(["2024-01-01"], tmp_path)
    row = pq.read_table(result.staged["2024-01-01"]).to_pylist()[0]
    assert (row["amount"], row["amountMinor"], row["extra_columns"]) == (amount, minor, None)


def test_the_timestamp_column_setting_stands_in_for_a_column_no_layout_names(
    source_url: str, tmp_path: Path
) -> None:
    """BACKFILL_SOURCE_TIMESTAMP_COLUMN=created_at on a table whose timestamp column has no
    layout's name: the setting says which column it is (it used to fail: no known layout)."""
    with psycopg.connect(source_url) as conn:
        conn.execute(
            "CREATE TABLE legacy (id BIGINT PRIMARY KEY, debit_account_id TEXT,"
            " credit_account_id TEXT, amount NUMERIC, currency_code TEXT, created_at TIMESTAMPTZ)"
        )
        conn.execute("INSERT INTO legacy VALUES (1, 'A', 'B', 1.5, 'USD', '2024-01-01T10:00Z')")
    source = DatabaseSource(url=source_url, table="legacy", timestamp_column="created_at")
    result = source.extract(["2024-01-01"], tmp_path)
    row = pq.read_table(result.staged["2024-01-01"]).to_pylist()[0]
    assert row["timestampUtc"] == "2024-01-01T10:00:00+00:00"
    assert row["extra_columns"] is None
