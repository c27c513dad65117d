"""An initial load (LOAD_MODE, ledger/load_mode.py) killed with SIGKILL while it posts and while it
builds its indexes, each time resumed to an exact ledger with every index back.

Real `dagster asset materialize` subprocesses; the moments are made with real locks the run is seen
waiting on (support/fault_harness.py), never with sleeps. Not marked slow: it runs on both servers.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg

from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.e2e.test_faults import (
    _days,
    _run_env,
    assert_checkpoints_match_ledger,
    assert_exact_ledger,
)
from ledger_backfill_dagster_tests.ledger.test_load_mode import SECONDARY, UNIQUE, indexes
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.fault_harness import (
    HOLD_ACCOUNTS,
    Backfill,
    Locker,
    poster_waiting_on_lock,
    wait_for_posters_gone,
    wait_until,
)

DAYS = _days(8)
ROWS_PER_DAY = 30
OUTBOX_INDEXES = {i for i in SECONDARY if i.startswith("idx_dual_ledger_outbox")}


def _load_rows(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT mode, status FROM ledger_backfill_loads ORDER BY id").fetchall()


def test_sigkill_during_an_initial_load_and_during_its_index_build(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    entries = ROWS_PER_DAY * len(DAYS)
    data = generate(tmp_path / "data", entries=entries, days=len(DAYS), accounts=20, seed=17)
    env = _run_env(backfill_env, data, 50, dagster_home(tmp_path))  # LOAD_MODE: the default
    with psycopg.connect(database_url) as setup:
        load_accounts(setup, read_accounts_file(str(data.accounts_file)))
    locker = Locker(database_url)
    runs = 0

    def start() -> Backfill:
        nonlocal runs
        runs += 1
        return Backfill(DAYS[0], DAYS[-1], env, tmp_path / f"run{runs}.log")

    def kill(backfill: Backfill) -> None:
        backfill.kill()
        assert backfill.proc.returncode == -signal.SIGKILL, backfill.tail()
        wait_for_posters_gone(conn)
        locker.release()

    try:
        # 1. During the load: the first batch waits for its accounts, the indexes are dropped.
        locker.hold(HOLD_ACCOUNTS)
        backfill = start()
        wait_until(
            lambda: poster_waiting_on_lock(conn, "lock_batch_accounts"), 180, "a batch", backfill
        )
        kill(backfill)
        assert _load_rows(conn) == [("initial", "LOADING")]
        assert not indexes(conn) & SECONDARY and indexes(conn) >= UNIQUE
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0
        assert_checkpoints_match_ledger(conn)

        # 2. The next run continues the load, posts everything, and is killed while it builds the
        # indexes of ledger_entries (a writer's lock on the table holds the build back).
        locker.hold("LOCK TABLE ledger_entries IN ROW EXCLUSIVE MODE")
        backfill = start()
        wait_until(lambda: poster_waiting_on_lock(conn, "CREATE INDEX"), 180, "the build", backfill)
        kill(backfill)
        assert _load_rows(conn) == [("initial", "REBUILDING")]
        assert indexes(conn) & SECONDARY == OUTBOX_INDEXES  # built first, in name order
        states = assert_checkpoints_match_ledger(conn)
        assert {s.status for s in states.values()} == {"COMPLETED"}
        assert_exact_ledger(conn, data.entries_file, entries)

        # 3. The next run builds what is missing, validates the balances, then posts live.
        final = start()
        assert final.wait(600) == 0, final.tail()
    finally:
        locker.close()

    assert indexes(conn) >= SECONDARY | UNIQUE
    assert _load_rows(conn) == [("initial", "DONE"), ("live", "DONE")]
    validated = conn.execute(
        "SELECT balances_validated_at IS NOT NULL, accounts_with_drift FROM ledger_backfill_loads"
        " WHERE mode = 'initial'"
    ).fetchone()
    assert validated == (True, 0)
    states = assert_checkpoints_match_ledger(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS, "COMPLETED")
    assert_exact_ledger(conn, data.entries_file, entries)
