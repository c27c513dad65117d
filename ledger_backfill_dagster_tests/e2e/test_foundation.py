"""The foundation: a real CSV backfill through all five assets into real PostgreSQL."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support import cli
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    balances,
    cli_materialize,
    expected_balances,
    ledger_snapshot,
    materialize_range,
    use_settings,
)


@pytest.fixture
def demo_data(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    data = generate(tmp_path / "data", entries=6000, days=6, accounts=30, start=date(2024, 1, 1))
    settings = {
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BATCH_SIZE": "500",
    }
    use_settings(monkeypatch, backfill_env, settings)
    return data


def test_backfill_posts_every_entry_once_and_reconciles(demo_data, database_url: str) -> None:
    result = materialize_range("2024-01-01", "2024-01-06")
    assert result.success
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 6000
        assert (
            conn.execute("SELECT count(DISTINCT reference_id) FROM ledger_entries").fetchone()[0]
            == 6000
        )
        assert_ledger_invariants(conn)
        stored = {k: v for k, v in balances(conn).items() if v != 0}
        expected = {k: v for k, v in expected_balances(demo_data.entries_file).items() if v != 0}
        assert stored == expected
        statuses = conn.execute(
            "SELECT DISTINCT status FROM ledger_backfill_checkpoints"
        ).fetchall()
        assert statuses == [("COMPLETED",)]
        partitions = conn.execute(
            "SELECT count(DISTINCT backfill_partition) FROM ledger_entries"
        ).fetchone()[0]
        assert partitions == 6  # every day of the range processed, not just the first
    report = result.asset_materializations_for_node("reconciliation_report")
    assert all(m.metadata["reconciles"].value for m in report)


def test_second_run_changes_nothing(demo_data, database_url: str) -> None:
    assert materialize_range("2024-01-01", "2024-01-06").success
    with psycopg.connect(database_url) as conn:
        before = ledger_snapshot(conn)
    assert materialize_range("2024-01-01", "2024-01-06").success
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before
        assert_ledger_invariants(conn)


def test_forced_redo_recognises_already_posted_rows(
    demo_data, database_url: str, monkeypatch
) -> None:
    assert materialize_range("2024-01-01", "2024-01-02").success
    with psycopg.connect(database_url) as conn:
        before = ledger_snapshot(conn)
    monkeypatch.setenv("FORCE_REDO", "true")
    assert materialize_range("2024-01-01", "2024-01-02").success
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before  # nothing doubled, no row called a duplicate


def test_cli_partition_range_and_job_execute(
    demo_data, backfill_env, database_url: str, tmp_path
) -> None:
    env = {**backfill_env, "DAGSTER_HOME": str(dagster_home(tmp_path))}
    done = cli_materialize("2024-01-01", "2024-01-03", env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = cli.run(
        cli.job_command("ledger_backfill_job", tags={"dagster/partition": "2024-01-05"}),
        {**os.environ, **env},
        timeout=300,
        cwd=None,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    with psycopg.connect(database_url) as conn:
        days = conn.execute(
            "SELECT backfill_partition, count(*) FROM ledger_entries GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [d for d, _ in days] == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-05"]
        assert sum(n for _, n in days) == 4000
        assert_ledger_invariants(conn)
        # Dagster's own run storage went to PostgreSQL (dagster-postgres), not SQLite.
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 2
