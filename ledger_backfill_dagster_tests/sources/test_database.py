"""DATABASE source: a real second PostgreSQL database (the seed's `ledger_entries_legacy`) read in
day windows through a server-side cursor, keyset-resumed, in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from ledger_backfill_dagster.sources.database import DatabaseSource
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    ledger_snapshot,
    materialize_range,
)
from ledger_backfill_dagster_tests.support.legacy_source import (
    load_legacy,
    use_database_source,
)


def source_figures(url: str) -> dict[str, object]:
    """Count, per-currency sums and every balance, computed in the source database itself."""
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_entries_legacy").fetchone()[0]
        sums = dict(
            conn.execute(
                "SELECT currency_code, sum(amount) FROM ledger_entries_legacy GROUP BY 1"
            ).fetchall()
        )
        balances: dict[str, Decimal] = defaultdict(Decimal)
        for account, delta in conn.execute(
            """SELECT debit_account_id, sum(amount) FROM ledger_entries_legacy GROUP BY 1
               UNION ALL
               SELECT credit_account_id, -sum(amount) FROM ledger_entries_legacy GROUP BY 1"""
        ).fetchall():
            balances[account] += delta
    return {"count": count, "sums": sums, "balances": {k: v for k, v in balances.items() if v}}


def ledger_figures(url: str) -> dict[str, object]:
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
        sums = dict(
            conn.execute(
                "SELECT currency_code, sum(amount) FROM ledger_entries GROUP BY 1"
            ).fetchall()
        )
        balances = dict(
            conn.execute("SELECT id, balance FROM bank_accounts WHERE balance <> 0").fetchall()
        )
    return {"count": count, "sums": sums, "balances": balances}


@pytest.fixture
def database_source_env(backfill_env, source_url, monkeypatch, tmp_path):
    settings = {
        "BACKFILL_SOURCE_URL": source_url,
        "BACKFILL_SOURCE_TABLE": "ledger_entries_legacy",
        "BACKFILL_SOURCE_PAGE_SIZE": "5000",
        "BATCH_SIZE": "5000",
    }
    return use_database_source(monkeypatch, backfill_env, settings)


@pytest.mark.slow
def test_legacy_table_of_120k_rows_is_backfilled_exactly(
    database_source_env, source_url, database_url, tmp_path, monkeypatch
) -> None:
    data = generate(tmp_path / "data", entries=120_000, days=4, accounts=60, start=date(2024, 1, 1))
    assert load_legacy(source_url, data.entries_file) == 120_000
    monkeypatch.setenv("ACCOUNTS_FILE", str(data.accounts_file))
    started = time.perf_counter()
    result = materialize_range("2024-01-01", "2024-01-04")
    seconds = time.perf_counter() - started
    assert result.success
    print(f"120k-row DATABASE backfill: {seconds:.1f} s")
    assert ledger_figures(database_url) == source_figures(source_url)
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)
        # The checkpoint's last_processed_id is the legacy table's own id.
        last_ids = conn.execute(
            "SELECT partition_key, last_processed_id FROM ledger_backfill_checkpoints ORDER BY 1"
        ).fetchall()
    with psycopg.connect(source_url) as conn:
        expected = conn.execute(
            "SELECT to_char(timestamp_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD'), max(id)::text"
            " FROM ledger_entries_legacy GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert last_ids == expected
    report = result.asset_materializations_for_node("reconciliation_report")
    assert all(m.metadata["reconciles"].value for m in report)


MEASURE_EXTRACT = r"""
import json, os, resource, sys
from pathlib import Path
from ledger_backfill_dagster.sources.database import DatabaseSource
import psutil
source = DatabaseSource(
    url=os.environ["MEASURE_SOURCE_URL"], table=os.environ["MEASURE_TABLE"],
    page_size=int(os.environ["MEASURE_PAGE_SIZE"]),
)
before = psutil.Process().memory_info().rss
result = source.extract(["2024-01-01"], Path(os.environ["MEASURE_STAGING"]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": result.rows_by_partition["2024-01-01"], "before": before, "peak": peak}))
"""


def measure_extract(url: str, table: str, staging: Path, page_size: int = 5000) -> dict:
    """Peak RSS of a fresh process that stages one day of `table` (URL passed by environment)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_EXTRACT],
        env={
            **os.environ,
            "MEASURE_SOURCE_URL": url,
            "MEASURE_TABLE": table,
            "MEASURE_PAGE_SIZE": str(page_size),
            "MEASURE_STAGING": str(staging),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_table_grows(source_url, tmp_path) -> None:
    """The whole table sits in ONE day, the worst case for a per-partition reader: 4x the rows
    must not mean 4x the memory, because only one page is ever held."""
    sizes = {}
    for rows in (50_000, 200_000):
        data = generate(tmp_path / f"d{rows}", entries=rows, days=1, accounts=60)
        with psycopg.connect(source_url) as conn:
            conn.execute("DROP TABLE IF EXISTS ledger_entries_legacy")
        assert load_legacy(source_url, data.entries_file) == rows
        sizes[rows] = measure_extract(source_url, "ledger_entries_legacy", tmp_path / f"s{rows}")
        assert sizes[rows]["rows"] == rows
    mib = {
        n: {k: round(v / 2**20, 1) for k, v in m.items() if k != "rows"} for n, m in sizes.items()
    }
    print(f"peak RSS of one-day extraction (MiB): {mib}")
    small = sizes[50_000]["peak"] - sizes[50_000]["before"]
    large = sizes[200_000]["peak"] - sizes[200_000]["before"]
    # Proportional growth would be ~4x the small run's; allow noise, not proportionality.
    assert large < small * 2 + 16 * 2**20, mib


def test_lost_connection_resumes_after_the_last_staged_id(source_url, tmp_path) -> None:
    """The source's server drops the reader's connection mid-day: the reader reconnects and
    continues with `id > last staged id`, so every row is staged exactly once."""
    data = generate(tmp_path / "data", entries=30_000, days=1, accounts=20)
    load_legacy(source_url, data.entries_file)
    source = DatabaseSource(
        url=source_url, table="ledger_entries_legacy", page_size=200, retry_delay_ms=50
    )
    state = tmp_path / "stage" / source.source_key / "paged" / "work" / "2024-01-01" / "_state.json"
    killed: list[int] = []

    def kill_once() -> None:
        deadline = time.monotonic() + 60
        with psycopg.connect(source_url, autocommit=True) as admin:
            while time.monotonic() < deadline and not killed:
                pages = json.loads(state.read_text())["pages"] if state.exists() else 0
                if pages >= 5:
                    readers = admin.execute(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE application_name = 'ledger_backfill_source'"
                    ).fetchall()
                    for (pid,) in readers:
                        if admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                            killed.append(pid)
                time.sleep(0.002)

    watcher = threading.Thread(target=kill_once)
    watcher.start()
    result = source.extract(["2024-01-01"], tmp_path / "stage")
    watcher.join()
    assert killed, "the reader finished before its connection could be dropped"
    ids = pq.read_table(result.staged["2024-01-01"], columns=["source_row_id"]).column(0)
    assert len(ids) == 30_000 == len(set(ids.to_pylist()))
    assert sorted(ids.to_pylist()) == list(range(1, 30_001))


OLD_LEDGER = """
CREATE SCHEMA legacy;
CREATE TABLE legacy.old_ledger (
    entry_no   BIGINT PRIMARY KEY,
    posted_at  TIMESTAMP,          -- local time of the old system, no zone
    debit      TEXT, credit TEXT, amt NUMERIC(18, 2), ccy CHAR(3), kind TEXT, ref TEXT,
    note       TEXT
);
INSERT INTO legacy.old_ledger VALUES
 (10, '2024-01-01 10:00', 'A-USD', 'B-USD', 100.10, 'USD', 'TRANSFER', 'R-1', 'first'),
 (11, '2024-01-02 00:30', 'B-USD', 'A-USD',  20.00, 'USD', 'FEE',      'R-2', NULL),
 (12, '2024-01-02 12:00', 'C-EUR', 'D-EUR',  30.05, 'EUR', 'PAYMENT',  'R-3', NULL),
 (13, NULL,               'A-USD', 'B-USD',   1.00, 'USD', 'TRANSFER', 'R-4', NULL),
 (14, '2023-12-31 10:00', 'A-USD', 'B-USD',   2.00, 'USD', 'TRANSFER', 'R-5', NULL),
 (15, '2024-01-02 13:00', 'C-EUR', 'D-EUR',  -5.00, 'EUR', 'PAYMENT',  'R-6', NULL),
 (16, '2024-01-01 10:00', 'A-USD', 'B-USD', 100.10, 'USD', 'TRANSFER', 'R-1', 'first'),
 (17, '2024-01-01 12:00', 'A-USD', 'B-USD',   9.99, 'USD', 'TRANSFER', 'X-1', NULL);
"""
OLD_LEDGER_MAP = {
    "debit": "debitAccountId",
    "credit": "creditAccountId",
    "amt": "amount",
    "ccy": "currencyCode",
    "kind": "transactionType",
    "ref": "referenceId",
    "posted_at": "timestampUtc",
}


def event_texts(result) -> str:
    texts = []
    for event in result.all_events:
        texts.append(str(event.message))
        data = getattr(event, "event_specific_data", None)
        texts.append(repr(data))
    return "\n".join(texts)


@pytest.mark.slow
def test_query_source_with_mapping_accounts_for_every_row(
    backfill_env, database_url, tmp_path, monkeypatch
) -> None:
    """Scenario 2 in place: the old table, moved to a `legacy` schema of the ledger's own
    database, read through a query (naive local timestamps, other column names, a LIKE with
    '%'): each source row ends posted, duplicate or reject; no row is silently left out."""
    source_url = database_url
    with psycopg.connect(source_url) as conn:
        conn.execute(OLD_LEDGER)
    accounts = tmp_path / "accounts.csv"
    accounts.write_text(
        "accountId,currencyCode,allowNegative\nA-USD,USD,true\nB-USD,USD,true\n"
        "C-EUR,EUR,true\nD-EUR,EUR,true\n"
    )
    settings = {
        "BACKFILL_SOURCE_URL": source_url,
        "BACKFILL_SOURCE_QUERY": "SELECT * FROM legacy.old_ledger WHERE ref LIKE 'R-%'",
        "BACKFILL_SOURCE_ID_COLUMN": "entry_no",
        "BACKFILL_SOURCE_COLUMN_MAP": json.dumps(OLD_LEDGER_MAP),
        "SOURCE_TIMEZONE": "Europe/Berlin",
        "ACCOUNTS_FILE": str(accounts),
    }
    monkeypatch.delenv("BACKFILL_SOURCE_TABLE", raising=False)
    use_database_source(monkeypatch, backfill_env, settings)
    result = materialize_range("2024-01-01", "2024-01-02")
    assert result.success
    with psycopg.connect(database_url) as conn:
        posted = conn.execute(
            "SELECT source_row_id, backfill_partition, reference_id, amount, metadata"
            " FROM ledger_entries ORDER BY source_row_id"
        ).fetchall()
        assert [(r[0], r[1], r[2], r[3]) for r in posted] == [
            (10, "2024-01-01", "R-1", Decimal("100.10")),
            (11, "2024-01-01", "R-2", Decimal("20.00")),  # 00:30 in Berlin is 23:30Z the day before
            (12, "2024-01-02", "R-3", Decimal("30.05")),
        ]
        assert posted[0][4] == {"note": "first"}  # unmapped columns are kept in the metadata
        rejects = conn.execute(
            "SELECT source_row_id, partition_key, reasons FROM ledger_backfill_rejects ORDER BY 1"
        ).fetchall()
        assert [(r[0], r[1]) for r in rejects] == [(13, None), (14, None), (15, "2024-01-02")]
        assert rejects[0][2] == ["timestampUtc: empty"]
        assert "BACKFILL_START_DATE" in rejects[1][2][0]
        duplicates = conn.execute(
            "SELECT source_row_id, reference_id FROM ledger_backfill_duplicates"
        ).fetchall()
        assert duplicates == [(16, "R-1")]
        assert_ledger_invariants(conn)
        before = ledger_snapshot(conn)
    report = result.asset_materializations_for_node("reconciliation_report")
    assert all(m.metadata["reconciles"].value for m in report)
    assert source_url not in event_texts(result)  # the secret URL is never shown

    again = materialize_range("2024-01-01", "2024-01-02")
    assert again.success
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before


def test_a_completed_day_is_kept_until_the_source_changes(source_url, tmp_path) -> None:
    """Re-running a completed day asks only for its row count and highest id; a late row makes
    the day be read again, whole."""
    data = generate(tmp_path / "data", entries=3000, days=3, accounts=20)
    load_legacy(source_url, data.entries_file)
    source = DatabaseSource(url=source_url, table="ledger_entries_legacy", page_size=400)
    keys = ["2024-01-01", "2024-01-02", "2024-01-03"]
    first = source.extract(keys, tmp_path / "stage")
    assert first.rows_by_partition == {k: 1000 for k in keys}
    again = source.extract(keys, tmp_path / "stage")
    assert (again.details["partitions_unchanged"], again.details["pages"]) == (3, 0)
    assert again.rows_by_partition == first.rows_by_partition
    with psycopg.connect(source_url) as conn:
        conn.execute(
            "INSERT INTO ledger_entries_legacy (ledger_id, debit_account_id, credit_account_id,"
            " amount, currency_code, reference_id, timestamp_utc)"
            " VALUES ('MASTER', 'A', 'B', 1, 'USD', 'LATE-1', '2024-01-02T12:00:00Z')"
        )
    late = source.extract(keys, tmp_path / "stage")
    assert late.details["partitions_unchanged"] == 2
    assert late.rows_by_partition["2024-01-02"] == 1001
    ids = pq.read_table(late.staged["2024-01-02"], columns=["source_row_id"]).column(0)
    assert len(set(ids.to_pylist())) == 1001 and max(ids.to_pylist()) == 3001


def test_the_source_url_password_is_never_shown(tmp_path) -> None:
    url = "postgresql://migrator:s3cret-pw@127.0.0.1:1/legacy"  # nothing listens on port 1
    source = DatabaseSource(
        url=url, table="ledger_entries_legacy", max_retries=1, retry_delay_ms=10
    )
    assert source.source_id == "database:127.0.0.1:1/legacy/ledger_entries_legacy"
    assert "s3cret" not in repr(source)
    with pytest.raises(ConnectionError) as failure:
        source.extract(["2024-01-01"], tmp_path)
    assert "still failing after 2 attempt(s)" in str(failure.value)
    assert "s3cret" not in str(failure.value)
