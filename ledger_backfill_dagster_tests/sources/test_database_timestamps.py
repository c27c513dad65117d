"""DATABASE source, issue 20: naive `timestamp` and `date` columns and text timestamp columns are
placed by the contract's own code (`timestamps.parse_utc`, the one CSV timestamps go through),
never by the database session's cast.

Each test builds a legacy table in a real second database on the same server and backfills it
through all five assets with real Dagster materializations. A local time a DST change skips or
repeats is a reject with the contract's reason (partition NULL, stage 'extract', as in a CSV); a
malformed text value is a reject of that row with its text; every other row posts at its exact
UTC instant, in its UTC day, once, even when two days' widened windows both read it; the run is
green and the reconciliation RECONCILES; a re-run posts nothing new and keeps the rejects.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    EMPTY,
    LATER_THAN_RUN_START,
    NONEXISTENT_LOCAL,
    UNPARSEABLE,
)
from ledger_backfill_dagster.sources.database import DatabaseSource
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    check_evaluations,
    ledger_snapshot,
    materialize_range,
)
from ledger_backfill_dagster_tests.support.legacy_source import use_database_source

TABLE_DDL = """
CREATE TABLE legacy_ts (
    id                 BIGINT PRIMARY KEY,
    debit_account_id   TEXT,
    credit_account_id  TEXT,
    amount             NUMERIC(18, 2),
    currency_code      TEXT,
    transaction_type   TEXT,
    reference_id       TEXT,
    timestamp_utc      {ts_type}
);
CREATE INDEX legacy_ts_at ON legacy_ts ({index});
"""


@dataclass(frozen=True)
class Row:
    """One legacy row: its timestamp as written, and what the contract makes of it: the exact
    UTC instant (posted) or the reject's reason."""

    ref: str
    written: str | None
    posted_at: datetime | None = None
    reason: str | None = None

    @property
    def day(self) -> str:
        assert self.posted_at is not None
        return self.posted_at.date().isoformat()


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def source_env(backfill_env, source_url, monkeypatch, tmp_path) -> dict[str, str]:
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("accountId,currencyCode,allowNegative\nA-EUR,EUR,true\nB-EUR,EUR,true\n")
    settings = {
        "BACKFILL_SOURCE_URL": source_url,
        "BACKFILL_SOURCE_TABLE": "legacy_ts",
        "BACKFILL_SOURCE_PAGE_SIZE": "3",  # several pages per day, resumes across them
        "ACCOUNTS_FILE": str(accounts),
        "REPORTS_DIR": str(tmp_path / "reports"),
    }
    return use_database_source(monkeypatch, backfill_env, settings)


def load(url: str, ts_type: str, rows: list[Row], index: str = "timestamp_utc") -> None:
    with psycopg.connect(url) as conn:
        conn.execute(TABLE_DDL.format(ts_type=ts_type, index=index))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO legacy_ts VALUES (%s, 'A-EUR', 'B-EUR', 1.25, 'EUR', 'TRANSFER', %s,"
                " %s)",
                [(n, row.ref, row.written) for n, row in enumerate(rows, start=1)],
            )
        conn.execute("ANALYZE legacy_ts")


def outcome(database_url: str) -> tuple[dict, dict]:
    """(posted: ref → (UTC instant, day), rejected: ref → (partition, stage, reasons, raw ts))."""
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)
        posted = {
            ref: (at.astimezone(UTC), day)
            for ref, at, day in conn.execute(
                "SELECT reference_id, timestamp_utc, backfill_partition FROM ledger_entries"
            ).fetchall()
        }
        rejected = {
            ref: (partition, stage, reasons, raw)
            for ref, partition, stage, reasons, raw in conn.execute(
                "SELECT raw_row->>'referenceId', partition_key, stage, reasons,"
                " raw_row->>'timestampUtc' FROM ledger_backfill_rejects"
            ).fetchall()
        }
        held = conn.execute(
            "SELECT (SELECT count(*) FROM ledger_backfill_duplicates)"
            " + (SELECT count(*) FROM ledger_backfill_conflicts)"
        ).fetchone()[0]
    assert held == 0, "a row staged twice would be held as a duplicate or a conflict"
    return posted, rejected


def assert_fates(database_url: str, rows: list[Row], raw: dict[str, str | None]) -> None:
    """Every good row posted at its instant (to the microsecond) in its day; every bad one a
    reject of no partition with its reason and the timestamp as the table holds it."""
    posted, rejected = outcome(database_url)
    assert posted == {r.ref: (r.posted_at, r.day) for r in rows if r.posted_at}
    assert rejected == {
        r.ref: (None, "extract", [r.reason], raw[r.ref]) for r in rows if r.reason is not None
    }


def assert_reconciles(result, reports: Path) -> None:
    assert result.success
    markdown = max(reports.glob("*/reconciliation/*.md"), key=lambda p: p.stat().st_mtime)
    assert markdown.read_text().startswith("# Reconciliation: RECONCILES"), markdown.read_text()
    checks = check_evaluations(result)
    assert checks and all(checks.values()), checks


def printed(rows: list[Row], ts_type: str, url: str) -> dict[str, str | None]:
    """Each row's timestamp as PostgreSQL prints it (`::text`): a reject keeps that text."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT reference_id, timestamp_utc::text FROM legacy_ts"))


BERLIN = [
    # Spring: 2024-03-31 02:00 → 03:00 CEST (01:00Z). The gap is refused, not guessed.
    Row("B-GAP", "2024-03-31 02:30", reason=NONEXISTENT_LOCAL),
    Row("B-GAP-START", "2024-03-31 02:00", reason=NONEXISTENT_LOCAL),
    Row("B-BEFORE-GAP", "2024-03-31 01:59:59.999999", utc(2024, 3, 31, 0, 59, 59, 999999)),
    Row("B-AFTER-GAP", "2024-03-31 03:00", utc(2024, 3, 31, 1)),
    # Near local midnight: the neighbouring UTC day (read by both days' windows, staged once).
    Row("B-MIDNIGHT-CET", "2024-03-31 00:30", utc(2024, 3, 30, 23, 30)),
    Row("B-MIDNIGHT-CEST", "2024-04-01 01:15:00.5", utc(2024, 3, 31, 23, 15, 0, 500000)),
    Row("B-LATE-CET", "2024-03-30 23:59:59", utc(2024, 3, 30, 22, 59, 59)),
    Row("B-EARLY", "2024-03-30 00:59:59.123456", utc(2024, 3, 29, 23, 59, 59, 123456)),
    # Autumn: 2024-10-27 03:00 CEST → 02:00 CET (01:00Z). 02:00–02:59:59 happen twice.
    Row("B-OVERLAP", "2024-10-27 02:30", reason=NONEXISTENT_LOCAL),
    Row("B-OVERLAP-START", "2024-10-27 02:00", reason=NONEXISTENT_LOCAL),
    Row("B-BEFORE-OVERLAP", "2024-10-27 01:59:59", utc(2024, 10, 26, 23, 59, 59)),
    Row("B-AFTER-OVERLAP", "2024-10-27 03:00", utc(2024, 10, 27, 2)),
    Row("B-MIDNIGHT-AUTUMN", "2024-10-28 00:30", utc(2024, 10, 27, 23, 30)),
    # No partition: before the start in UTC (local 00:30 on the first day is the day before).
    Row("B-BEFORE-START", "2024-01-01 00:30", reason=BEFORE_START_DATE),
    Row("B-NULL", None, reason=EMPTY),
]


def run_twice_and_compare(ranges: list[tuple[str, str]], database_url: str, reports: Path):
    for first, last in ranges:
        assert_reconciles(materialize_range(first, last), reports)
    with psycopg.connect(database_url) as conn:
        before = ledger_snapshot(conn)
        rejects = conn.execute(
            "SELECT source_row_id, partition_key, reasons FROM ledger_backfill_rejects ORDER BY 1"
        ).fetchall()
    again = materialize_range(*ranges[0])
    assert_reconciles(again, reports)
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before  # nothing new posted
        assert (
            conn.execute(
                "SELECT source_row_id, partition_key, reasons FROM ledger_backfill_rejects"
                " ORDER BY 1"
            ).fetchall()
            == rejects
        )


def test_naive_timestamps_in_berlin_follow_the_contract(
    source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_TIMEZONE", "Europe/Berlin")
    load(source_url, "TIMESTAMP", BERLIN)
    ranges = [("2024-03-29", "2024-04-01"), ("2024-10-26", "2024-10-28")]
    run_twice_and_compare(ranges, database_url, tmp_path / "reports")
    assert_fates(database_url, BERLIN, printed(BERLIN, "TIMESTAMP", source_url))

    # A row near a day boundary is read by two days' windows and staged by one only.
    source = DatabaseSource(
        url=source_url, table="legacy_ts", source_timezone="Europe/Berlin", page_size=2
    )
    days = ["2024-03-29", "2024-03-30", "2024-03-31", "2024-04-01"]
    result = source.extract(days, tmp_path / "stage")
    staged = {
        day: sorted(pq.read_table(path, columns=["referenceId"]).column(0).to_pylist())
        for day, path in result.staged.items()
    }
    assert staged == {
        "2024-03-29": ["B-EARLY"],
        "2024-03-30": ["B-LATE-CET", "B-MIDNIGHT-CET"],
        "2024-03-31": ["B-AFTER-GAP", "B-BEFORE-GAP", "B-MIDNIGHT-CEST"],
    }
    assert len(result.unpartitioned_rejects) == 6  # the four DST rejects, before start, NULL

    # A completed day is kept while its widened window is unchanged; a late row that only the
    # neighbouring UTC day can hold (local 00:45 on the 31st is 23:45Z on the 30th) is in both
    # days' windows: both are read again, and it is staged by its own day only.
    again = source.extract(days, tmp_path / "stage")
    assert (again.details["partitions_unchanged"], again.details["pages"]) == (4, 0)
    with psycopg.connect(source_url) as conn:
        conn.execute(
            "INSERT INTO legacy_ts VALUES (100, 'A-EUR', 'B-EUR', 1, 'EUR', 'TRANSFER', 'B-LATE',"
            " '2024-03-31 00:45')"
        )
    late = source.extract(days, tmp_path / "stage")
    assert late.details["partitions_unchanged"] == 2  # 03-29 and 04-01 are not reached
    assert late.rows_by_partition == {
        "2024-03-29": 1,
        "2024-03-30": 3,
        "2024-03-31": 3,
        "2024-04-01": 0,
    }
    ids = pq.read_table(late.staged["2024-03-30"], columns=["source_row_id"]).column(0)
    assert 100 in ids.to_pylist()


NEW_YORK = [
    # Spring: 2024-03-10 02:00 EST → 03:00 EDT (07:00Z).
    Row("N-GAP", "2024-03-10 02:30", reason=NONEXISTENT_LOCAL),
    Row("N-BEFORE-GAP", "2024-03-10 01:59:59", utc(2024, 3, 10, 6, 59, 59)),
    Row("N-AFTER-GAP", "2024-03-10 03:00", utc(2024, 3, 10, 7)),
    # Local evening is the next UTC day.
    Row("N-EVENING-EST", "2024-03-09 20:00:00.000001", utc(2024, 3, 10, 1, 0, 0, 1)),
    Row("N-LAST-OF-DAY", "2024-03-10 19:59:59.999999", utc(2024, 3, 10, 23, 59, 59, 999999)),
    Row("N-EVENING-EDT", "2024-03-10 20:00", utc(2024, 3, 11)),
    # Autumn: 2024-11-03 02:00 EDT → 01:00 EST (06:00Z). 01:00–01:59:59 happen twice.
    Row("N-OVERLAP", "2024-11-03 01:30", reason=NONEXISTENT_LOCAL),
    Row("N-BEFORE-OVERLAP", "2024-11-03 00:59:59", utc(2024, 11, 3, 4, 59, 59)),
    Row("N-AFTER-OVERLAP", "2024-11-03 02:00", utc(2024, 11, 3, 7)),
    Row("N-EVENING-AUTUMN", "2024-11-02 21:00", utc(2024, 11, 3, 1)),
]


def test_naive_timestamps_in_new_york_follow_the_contract(
    source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_TIMEZONE", "America/New_York")
    load(source_url, "TIMESTAMP(6)", NEW_YORK)
    ranges = [("2024-03-09", "2024-03-11"), ("2024-11-02", "2024-11-03")]
    run_twice_and_compare(ranges, database_url, tmp_path / "reports")
    assert_fates(database_url, NEW_YORK, printed(NEW_YORK, "TIMESTAMP", source_url))


BERLIN_DATES = [
    # A date is local midnight: in Berlin, 23:00Z or 22:00Z of the UTC day before.
    Row("D-CET", "2024-03-30", utc(2024, 3, 29, 23)),
    Row("D-SPRING", "2024-03-31", utc(2024, 3, 30, 23)),
    Row("D-CEST", "2024-04-01", utc(2024, 3, 31, 22)),
    Row("D-FIRST", "2024-01-01", reason=BEFORE_START_DATE),  # 2023-12-31T23:00Z
    Row("D-NULL", None, reason=EMPTY),
]


def test_a_date_column_is_local_midnight(
    source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_TIMEZONE", "Europe/Berlin")
    load(source_url, "DATE", BERLIN_DATES)
    assert_reconciles(materialize_range("2024-03-29", "2024-03-31"), tmp_path / "reports")
    assert_fates(database_url, BERLIN_DATES, printed(BERLIN_DATES, "DATE", source_url))


TEXTS = [
    Row("T-Z", "2024-03-30T10:00:00Z", utc(2024, 3, 30, 10)),
    Row("T-MINUS-2", "2024-03-30 23:30:00-02:00", utc(2024, 3, 31, 1, 30)),
    Row("T-PLUS-0530", "2024-03-31T00:30:00+05:30", utc(2024, 3, 30, 19)),
    Row("T-PLUS-COMPACT", "2024-03-31T01:30:00.25+0200", utc(2024, 3, 30, 23, 30, 0, 250000)),
    Row("T-NAIVE", "2024-03-30 12:34:56.789012", utc(2024, 3, 30, 11, 34, 56, 789012)),
    Row("T-DATE", "2024-03-31", utc(2024, 3, 30, 23)),
    Row("T-NAIVE-CEST", "2024-04-01T00:15", utc(2024, 3, 31, 22, 15)),
    Row("T-PADDED", "  2024-03-31 12:00:00 ", utc(2024, 3, 31, 10)),
    Row("T-COMMA", "2024-03-31T12:00:00,5+01", utc(2024, 3, 31, 11, 0, 0, 500000)),
    Row("T-LOWER-Z", "2024-03-31t23:59:59.999999z", reason=UNPARSEABLE),
    Row("T-GAP", "2024-03-31 02:30", reason=NONEXISTENT_LOCAL),
    Row("T-DMY", "31/02/2024", reason=UNPARSEABLE),
    Row("T-FEB-30", "2024-02-30 10:00", reason=UNPARSEABLE),
    Row("T-MONTH-13", "2024-13-01", reason=UNPARSEABLE),
    Row("T-WORD", "yesterday", reason=UNPARSEABLE),
    Row("T-EMPTY", "", reason=EMPTY),
    Row("T-BLANK", "   ", reason=EMPTY),
    Row("T-NULL", None, reason=EMPTY),
    Row("T-BEFORE", "2023-12-31T23:00:00Z", reason=BEFORE_START_DATE),
]


def test_text_timestamps_are_read_by_the_contract(
    source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    """A text column with malformed values among good ones, with and without offsets: every
    good row posts at its instant, every bad one is a reject with its reason and its text."""
    monkeypatch.setenv("SOURCE_TIMEZONE", "Europe/Berlin")
    load(source_url, "TEXT", TEXTS, index='timestamp_utc COLLATE "C"')
    run_twice_and_compare([("2024-03-29", "2024-04-01")], database_url, tmp_path / "reports")
    assert_fates(database_url, TEXTS, {r.ref: r.written for r in TEXTS})
    with psycopg.connect(database_url) as conn:
        # The text is staged as written (as a CSV's is): lineage keeps it.
        staged = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE reference_id = 'T-PADDED'"
        ).fetchone()[0]
    assert staged == 1


MILLION = """
CREATE TABLE legacy_ts AS
SELECT n AS id, 'A-EUR' AS debit_account_id, 'B-EUR' AS credit_account_id,
       1.25::numeric(18, 2) AS amount, 'EUR' AS currency_code, 'TRANSFER' AS transaction_type,
       'M-' || n AS reference_id,
       CASE WHEN n % 100000 = 0 THEN '31/02/2024'
            ELSE to_char(timestamp '2024-01-01' + (n - 1) * interval '8.64 seconds',
                         'YYYY-MM-DD"T"HH24:MI:SS"Z"') END AS timestamp_utc
  FROM generate_series(1, 1000000) AS n;
ALTER TABLE legacy_ts ADD PRIMARY KEY (id);
ANALYZE legacy_ts;
"""


def timed(work) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = work()
    return time.perf_counter() - started, value


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MEASURE_TEXT_TIMESTAMPS"),
    reason="a measurement (builds 1M rows, ~45 s): set MEASURE_TEXT_TIMESTAMPS=1 to run it",
)
def test_a_million_text_timestamps_are_read_a_day_at_a_time(source_url, tmp_path) -> None:
    """The figures in docs/sources.md: 1M rows over 100 days (10,000 a day; 10 malformed), a
    TEXT timestamp column, read without and with an index on (timestamp_utc COLLATE "C").
    Timings are printed, never asserted (the machine is shared); what is read is asserted.
    Run: MEASURE_TEXT_TIMESTAMPS=1 TEST_PG_ADMIN_URL=… pytest -s -k million <this file>."""
    with psycopg.connect(source_url) as conn:
        conn.execute(MILLION)
        expected = dict(
            conn.execute(
                "SELECT left(timestamp_utc, 10), count(*)::int FROM legacy_ts"
                " WHERE timestamp_utc BETWEEN '2024-02-10' AND '2024-02-20' GROUP BY 1"
            ).fetchall()
        )
    source = DatabaseSource(url=source_url, table="legacy_ts", page_size=5000)
    shape = source._with_retries(source._shape)
    figures: dict[str, float] = {}
    for label, ddl in (
        ("no index", None),
        ("index", 'CREATE INDEX legacy_ts_at ON legacy_ts (timestamp_utc COLLATE "C")'),
    ):
        if ddl:
            with psycopg.connect(source_url) as conn:
                conn.execute(ddl)
                conn.execute("ANALYZE legacy_ts")
        run_start = datetime.now(UTC)
        seconds, unplaced = timed(
            lambda s=run_start: source._with_retries(
                lambda conn: source._unpartitioned(conn, shape, s)
            )
        )
        assert len(unplaced.rejects) == 10 and not unplaced.strays
        figures[f"whole-source pass, {label}"] = seconds
        day = source._day_where(shape, "2024-02-10", run_start, [])
        days = [f"2024-02-{n:02d}" for n in range(10, 20)]
        seconds, result = timed(lambda d=days, st=tmp_path / label: source.extract(d, st))
        assert result.rows_by_partition == {d: expected[d] for d in days}
        figures[f"ten days (extract, whole-source pass included), {label}"] = seconds
        figures[f"one day, {label}"] = (seconds - figures[f"whole-source pass, {label}"]) / 10
        seconds, result = timed(lambda d=days, st=tmp_path / label: source.extract(d, st))
        assert result.details["partitions_unchanged"] == 10
        figures[f"ten unchanged days (probe only), {label}"] = seconds
        seconds, same = timed(
            lambda d=day: source._with_retries(
                lambda conn: conn.execute(
                    sql.SQL("SELECT count(*) FROM legacy_ts AS src WHERE {}").format(d.where),
                    d.params,
                ).fetchone()[0]
            )
        )
        # The day and its two neighbours by prefix, less the malformed row among them.
        assert same == 29_999
        figures[f"day window count, {label}"] = seconds
    print({k: round(v, 3) for k, v in figures.items()})


def test_timestamptz_instants_are_kept_to_the_microsecond(source_url, tmp_path) -> None:
    """A timestamptz column goes through the same parser, as its UTC instant: nothing moves,
    whatever SOURCE_TIMEZONE; `infinity` and `-infinity` are rejects, never a failed read."""
    rows = [
        Row("Z-MICRO", "2024-03-31 02:30:00.123456+02", utc(2024, 3, 31, 0, 30, 0, 123456)),
        Row("Z-LAST", "2024-03-31 23:59:59.999999Z", utc(2024, 3, 31, 23, 59, 59, 999999)),
        Row("Z-FAR-EAST", "2024-04-01 09:00+14", utc(2024, 3, 31, 19)),
        Row("Z-INFINITY", "infinity", reason=UNPARSEABLE),
        Row("Z-MINUS-INFINITY", "-infinity", reason=UNPARSEABLE),
        Row("Z-NULL", None, reason=EMPTY),
    ]
    load(source_url, "TIMESTAMPTZ", rows)
    source = DatabaseSource(
        url=source_url, table="legacy_ts", source_timezone="Europe/Berlin", page_size=2
    )
    result = source.extract(["2024-03-31"], tmp_path / "stage")
    staged = pq.read_table(result.staged["2024-03-31"]).to_pylist()
    assert {r["referenceId"]: r["timestamp_utc"] for r in staged} == {
        r.ref: r.posted_at for r in rows if r.posted_at
    }
    # Staged as before issue 20: the instant in UTC.
    assert {r["timestampUtc"] for r in staged} >= {"2024-03-31T00:30:00.123456+00:00"}
    rejects = {
        json.loads(raw)["referenceId"]: reasons
        for raw, reasons in zip(
            result.unpartitioned_rejects["raw_row"],
            result.unpartitioned_rejects["reasons"],
            strict=True,
        )
    }
    assert rejects == {r.ref: [r.reason] for r in rows if r.reason}


@pytest.mark.parametrize(
    ("ts_type", "index"),
    [
        ("TIMESTAMP", "timestamp_utc"),
        ("DATE", "timestamp_utc"),
        ("TEXT", 'timestamp_utc COLLATE "C"'),
        ("VARCHAR(40)", 'timestamp_utc COLLATE "C"'),
        ("CHAR(30)", 'timestamp_utc COLLATE "C"'),
    ],
)
def test_the_day_window_is_a_range_of_the_column_index(
    source_url, tmp_path, ts_type: str, index: str
) -> None:
    """Each kind's day window can be served by the index docs/sources.md names (asked of the
    planner with sequential scans off: a table this small would be scanned), and each row of
    the day is staged, char padding and varchar included."""
    written = "2024-03-31" if ts_type == "DATE" else "2024-03-31 12:00"
    rows = [Row("W-1", written), Row("W-2", "2024-02-01")]
    load(source_url, ts_type, rows, index=index)
    source = DatabaseSource(url=source_url, table="legacy_ts", source_timezone="Europe/Berlin")
    shape = source._with_retries(source._shape)
    day = "2024-03-30" if ts_type == "DATE" else "2024-03-31"
    window = source._day_where(shape, day, datetime.now(UTC), [])
    with psycopg.connect(source_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                sql.SQL("EXPLAIN SELECT * FROM legacy_ts AS src WHERE {}").format(window.where),
                window.params,
            )
        )
    assert "legacy_ts_at" in plan, plan
    result = source.extract([day], tmp_path / "stage")
    assert result.rows_by_partition == {day: 1}
    assert pq.read_table(result.staged[day], columns=["referenceId"]).column(0).to_pylist() == [
        "W-1"
    ]


def test_a_changed_source_timezone_never_posts_a_naive_row_again(
    source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    """SOURCE_TIMEZONE set wrong, then corrected: the rows' instants move (here across UTC
    midnight, to another partition), but each is the same source row. Staged as its local time,
    its identity does not change: the new instant is held as a conflict of that very row, never
    posted as another (a row without a reference would otherwise post twice: issue 13's rule,
    for a table)."""
    load(
        source_url,
        "timestamp",
        [
            Row("R-1", "2024-03-31 00:30"),
            Row("", "2024-03-31 00:45"),
            Row("R-3", "2024-03-31 12:00"),
        ],
    )
    monkeypatch.setenv("SOURCE_TIMEZONE", "UTC")
    assert materialize_range("2024-03-30", "2024-03-31").success
    with psycopg.connect(database_url) as conn:
        before = ledger_snapshot(conn)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 3

    monkeypatch.setenv("SOURCE_TIMEZONE", "Europe/Berlin")  # 00:30 CET is 23:30Z the day before
    assert materialize_range("2024-03-30", "2024-03-31").success  # held rows reconcile
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)
        after = ledger_snapshot(conn)
        assert after["entries"] == before["entries"], "a source row was posted again"
        assert (after["balances"], after["outbox"]) == (before["balances"], before["outbox"])
        held = conn.execute(
            "SELECT count(*) FROM ledger_backfill_conflicts WHERE same_source_row"
        ).fetchone()[0]
        assert held == 3  # every instant moved by an hour: each row held against its own entry
        assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 0

    monkeypatch.setenv("SOURCE_TIMEZONE", "UTC")  # corrected back: nothing held any more
    assert materialize_range("2024-03-30", "2024-03-31").success
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before
        assert conn.execute("SELECT count(*) FROM ledger_backfill_conflicts").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("ts_type", "later"),
    [
        ("TIMESTAMPTZ", "2999-12-31 23:59:59+00"),
        ("TIMESTAMP", "2999-12-31 23:59:59"),
        ("TEXT", "2999-12-31T23:59:59Z"),
        ("TEXT", "9999-12-31"),
    ],
)
def test_a_row_dated_after_the_run_start_is_a_reject_not_a_row_left_unread(
    source_url, tmp_path, ts_type: str, later: str
) -> None:
    """A sentinel date (`2999-12-31`) or a clock gone wrong: no day of this run can hold the
    row, so, as a CSV scan does, it is a reject of no partition ("later than the run's start"),
    counted among the rows read, never left unread and unaccounted for."""
    rows = [Row("NOW-OK", "2024-03-05 10:00"), Row("LATER", later)]
    load(source_url, ts_type, rows)
    source = DatabaseSource(url=source_url, table="legacy_ts", source_timezone="UTC")
    result = source.extract(["2024-03-05"], tmp_path / "stage")
    assert result.rows_by_partition == {"2024-03-05": 1}
    rejects = result.unpartitioned_rejects
    assert [json.loads(r)["referenceId"] for r in rejects["raw_row"]] == ["LATER"]
    assert [list(r) for r in rejects["reasons"]] == [[LATER_THAN_RUN_START]]
    assert result.rows_read == 2
