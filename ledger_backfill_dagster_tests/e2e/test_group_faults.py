"""Exactly-once under SIGKILL when small partitions are posted in groups (ledger/group_posting.py).

Real `dagster asset materialize` subprocesses, killed at moments the test creates with real locks
(support/fault_harness.py): inside a group's batch, after a group's batch committed but before its
days are COMPLETED, while the next group opens, and at random. After every kill the checkpoints
match the ledger exactly; one resume then completes every day with an exact ledger.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.e2e.test_faults import (
    OPENING_A_PARTITION,
    SOURCE_ID,
    _days,
    _run_env,
    assert_checkpoints_match_ledger,
    assert_exact_ledger,
)
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.fault_harness import (
    HOLD_ACCOUNTS,
    HOLD_PARTITION_OPENING,
    Backfill,
    Locker,
    PosterStepper,
    poster_waiting_on_lock,
    wait_for_posters_gone,
    wait_until,
)

DAYS = _days(40)
ROWS_PER_DAY = 8
BATCH_SIZE = 50  # six days of eight rows per group


@pytest.mark.slow
def test_sigkill_while_posting_groups_loses_and_doubles_nothing(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    entries = ROWS_PER_DAY * len(DAYS)
    data = generate(tmp_path / "data", entries=entries, days=len(DAYS), accounts=20, seed=11)
    env = _run_env(backfill_env, data, BATCH_SIZE, dagster_home(tmp_path))
    # The chart of accounts loaded up front, so its rows exist to be held locked.
    with psycopg.connect(database_url) as load:
        load_accounts(load, read_accounts_file(str(data.accounts_file)))
    locker, stepper = Locker(database_url), PosterStepper(database_url, conn)
    rng = random.Random(5)
    runs = 0

    def start() -> Backfill:
        nonlocal runs
        runs += 1
        return Backfill(DAYS[0], DAYS[-1], env, tmp_path / f"run{runs}.log")

    def killed(backfill: Backfill) -> dict:
        backfill.kill()
        assert backfill.proc.returncode == -signal.SIGKILL, backfill.tail()
        wait_for_posters_gone(conn)
        locker.release()
        stepper.let_go()
        return assert_checkpoints_match_ledger(conn)

    try:
        # 1. Inside the first group's batch: entries inserted, the accounts' locks not granted.
        locker.hold(HOLD_ACCOUNTS)
        backfill = start()
        wait_until(
            lambda: poster_waiting_on_lock(conn, "lock_batch_accounts"), 180, "a group", backfill
        )
        states = killed(backfill)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0
        assert states and all(s.processed == 0 for s in states.values())

        # 2. A group's batch committed (every day of it advanced), none of its days COMPLETED.
        stepper.hold()
        backfill = start()
        stepper.wait_after_commit(backfill)
        states = killed(backfill)
        advanced = [k for k, s in states.items() if s.processed > 0]
        assert len(advanced) > 1, states  # several days committed in one batch
        assert all(states[k].status == "IN_PROGRESS" for k in advanced)
        assert all(states[k].processed == states[k].to_process for k in advanced)

        # 3. While a later group opens: its checkpoints wait on an uncommitted one.
        gate = DAYS[25]
        locker.hold(HOLD_PARTITION_OPENING, (SOURCE_ID, gate))
        backfill = start()
        wait_until(
            lambda: poster_waiting_on_lock(conn, OPENING_A_PARTITION), 180, "group", backfill
        )
        states = killed(backfill)
        assert gate not in states
        assert states[DAYS[0]].status == "COMPLETED"  # the half-done group resumed, day by day

        # 4. At random while posting.
        backfill = start()
        time.sleep(rng.uniform(0.5, 4.0))
        killed(backfill)

        final = start()
        assert final.wait(600) == 0, final.tail()
    finally:
        locker.close()
        stepper.close()

    states = assert_checkpoints_match_ledger(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS, "COMPLETED")
    assert all(s.processed == s.to_process == ROWS_PER_DAY for s in states.values())
    assert_exact_ledger(conn, data.entries_file, entries)
