"""Fault-injection harness: real `dagster asset materialize` subprocesses, killed and resumed.

Nothing here fakes our code or PostgreSQL. Moments inside the posting loop are reached with real
PostgreSQL locks held from a second connection (the poster blocks exactly where it needs that
lock), then the run's whole process group is killed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg

from ledger_backfill_dagster_tests.support import cli

POSTER_APP = "ledger_backfill_dagster"  # application_name of the posting connections


def set_pool_limit(env: dict[str, str], pool: str = "ledger_pg", limit: int = 4) -> None:
    """Create the pool's limit once, before runs start at the same moment: on a fresh instance
    concurrent runs each insert the pool's default limit and all but one fail on
    `concurrency_limits_concurrency_key_key` (dagster-postgres)."""
    done = cli.run(
        [str(cli.DAGSTER), "instance", "concurrency", "set", pool, str(limit)],
        subprocess_env(env),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    merged = {**os.environ, **env}
    if "DATABASE_URL" in env:
        merged.pop("DAGSTER_PG_URL", None)  # Dagster's storage beside this test's ledger
    return merged


def ledger_backfill(env: dict[str, str], *args: str) -> str:
    """`ledger-backfill args`, which must succeed; returns its standard output."""
    done = cli.run([str(cli.LEDGER_BACKFILL), *args], subprocess_env(env), timeout=120, cwd=None)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


class Backfill:
    """One `dagster asset materialize --partition-range first...last` in its own session."""

    def __init__(self, first: str, last: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cli.materialize_command(*cli.partition_range(first, last)),
            env=subprocess_env(env),
            cwd=cli.REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (the run worker and anything it started)."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"backfill did not finish in {timeout} s:\n{self.tail()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    backfill: Backfill | None = None,
    interval: float = 0.02,
) -> object:
    """Poll until predicate() is truthy; fail if the backfill exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if backfill is not None and not backfill.running:
            raise AssertionError(
                f"backfill exited ({backfill.proc.returncode}) before {what}:\n{backfill.tail()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class PartitionState:
    status: str
    batches: int
    processed: int
    successful: int
    duplicates: int
    conflicts: int
    last_id: int | None
    run_id: str | None
    to_process: int = 0

    @property
    def remaining(self) -> int:
        """Rows of the partition's plan not committed yet."""
        return self.to_process - self.processed


def checkpoints(conn: psycopg.Connection) -> dict[str, PartitionState]:
    rows = conn.execute(
        "SELECT partition_key, status, batches_committed, total_processed, total_successful,"
        " total_duplicates, total_conflicts, last_processed_id, run_id,"
        " coalesce(total_to_process, 0)"
        " FROM ledger_backfill_checkpoints ORDER BY partition_key"
    ).fetchall()
    return {
        r[0]: PartitionState(
            r[1], r[2], r[3], r[4], r[5], r[6], int(r[7]) if r[7] else None, r[8], r[9]
        )
        for r in rows
    }


def poster_waiting_on_lock(conn: psycopg.Connection, fragment: str) -> bool:
    """A posting connection is blocked on a heavyweight lock in a statement containing fragment."""
    return (
        conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s AND wait_event_type = 'Lock' AND query ILIKE %s",
            (POSTER_APP, f"%{fragment}%"),
        ).fetchone()
        is not None
    )


def wait_for_posters_gone(conn: psycopg.Connection, timeout: float = 30) -> None:
    """After a kill, wait until the server has noticed and ended the dead client's backends
    (until then their uncommitted batch and their locks are still there)."""

    def gone() -> bool:
        return (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = %s AND pid <> pg_backend_pid()",
                (POSTER_APP,),
            ).fetchone()[0]
            == 0
        )

    wait_until(gone, timeout, "the killed run's database sessions to end", interval=0.05)


def poster_blocked(conn: psycopg.Connection, except_on: str) -> bool:
    """A posting connection waits on a heavyweight lock, in a statement without except_on."""
    return (
        conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s AND wait_event_type = 'Lock' AND query NOT ILIKE %s",
            (POSTER_APP, f"%{except_on}%"),
        ).fetchone()
        is not None
    )


class Locker:
    """A second connection that holds a real lock the poster will need, at a chosen moment."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)

    def hold(self, statement: str, params: tuple = ()) -> None:
        self.conn.execute(statement, params)

    def release(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


HOLD_PARTITION_OPENING = (
    "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)"
    " VALUES (%s, 'CSV', %s)"
)
PAUSE_PROBE_TABLE = "ledger_backfill_pause_requests"
HOLD_PAUSE_PROBE = f"LOCK TABLE {PAUSE_PROBE_TABLE} IN ACCESS EXCLUSIVE MODE"
HOLD_ACCOUNTS = "SELECT id FROM bank_accounts ORDER BY id FOR UPDATE"


class PosterStepper:
    """Moves a run's poster forward one committed batch at a time, with two real locks.

    After every committed batch the poster reads the pause table: while `pause` holds that table
    locked, the poster stops right after a commit. To let exactly one more batch through, the
    accounts are locked first (the next batch stops at its account locks), the table released,
    locked again once the batch waits for the accounts, and the accounts released: the batch
    commits and the poster stops at its next pause check. No step depends on how fast anything
    runs; each waits for the lock the poster is seen waiting on."""

    def __init__(self, url: str, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.pause = Locker(url)
        self.accounts = Locker(url)

    def hold(self) -> None:
        """Take the pause table before the run starts: its first commit is then a stop."""
        self.pause.hold(HOLD_PAUSE_PROBE)

    def let_go(self) -> None:
        self.pause.release()
        self.accounts.release()

    def close(self) -> None:
        self.pause.close()
        self.accounts.close()

    def wait_after_commit(self, backfill: Backfill) -> None:
        wait_until(
            lambda: poster_waiting_on_lock(self.conn, PAUSE_PROBE_TABLE),
            120,
            "the poster to stop after a commit",
            backfill,
        )

    def step(self, backfill: Backfill) -> None:
        """From a stop after a commit, let exactly one more batch commit and stop again."""
        self.accounts.hold(HOLD_ACCOUNTS)
        self.pause.release()
        wait_until(
            lambda: poster_blocked(self.conn, except_on=PAUSE_PROBE_TABLE),
            60,
            "the next batch to wait for its accounts",
            backfill,
        )
        self.hold()
        self.accounts.release()
        self.wait_after_commit(backfill)

    def advance_until(
        self,
        backfill: Backfill,
        current: Callable[[], tuple[str, PartitionState]],
        done: Callable[[PartitionState], bool],
    ) -> tuple[str, PartitionState]:
        """Step batch by batch until the partition being posted satisfies done. The caller makes
        sure the run has a batch left to post before it reaches a state that does."""
        self.wait_after_commit(backfill)
        while True:
            key, state = current()
            if done(state):
                return key, state
            self.step(backfill)


def dagster_runs(home: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Every run of this Dagster instance: its status and its tags."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {
            r.dagster_run.run_id: (r.dagster_run.status.value, dict(r.dagster_run.tags))
            for r in instance.get_run_records()
        }


def pool_claims(home: Path, pool: str = "ledger_pg") -> tuple[set[str], set[str]]:
    """(runs holding a slot of the pool, runs queued for one)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        info = instance.event_log_storage.get_concurrency_info(pool)
        return info.active_run_ids, info.pending_run_ids


@dataclass
class KillRecord:
    moment: str
    seconds_into_run: float
    batches_before: int
    batches_at_kill: int
    ledger_rows: int
    checkpoint_processed: int
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def jitter(rng: random.Random, low: float, high: float) -> None:
    time.sleep(rng.uniform(low, high))


class CommitAckDropper:
    """A TCP relay on 127.0.0.1 in front of the real PostgreSQL server that loses one commit
    acknowledgement: after the trigger-th statement containing `marker`, the next COMMIT is
    forwarded, the server commits it, and the connection is cut before the reply reaches the
    client. It fakes nothing: the server and the client are real; only the network fails."""

    def __init__(self, database_url: str, marker: bytes, trigger: int) -> None:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        host = str(info.get("host") or "localhost")
        port = int(info.get("port") or 5432)
        if host.startswith("/"):
            self.upstream: tuple = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        else:
            self.upstream = (socket.AF_INET, (host, port))
        self.marker, self.trigger = marker, trigger
        self.seen = 0
        self.fired = threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        info.update(
            host="127.0.0.1",
            port=str(self.listener.getsockname()[1]),
            sslmode="disable",
            gssencmode="disable",
        )
        info.pop("hostaddr", None)
        self.url = psycopg.conninfo.make_conninfo(**info)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(self.upstream[0], socket.SOCK_STREAM)
            server.connect(self.upstream[1])
            state = {"armed": False, "cut": False}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, state), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                if self.marker in data:
                    with self.lock:
                        self.seen += 1
                        if self.seen == self.trigger and not self.fired.is_set():
                            state["armed"] = True
                if state["armed"] and b"COMMIT" in data:
                    state["cut"] = True  # from now on the server's replies are dropped
                    server.sendall(data)
                    time.sleep(0.5)  # the server commits and answers into the void
                    self.fired.set()
                    break
                server.sendall(data)
        except OSError:
            pass
        for sock in (client, server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _down(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := server.recv(65536):
                if state["cut"]:
                    continue
                client.sendall(data)
        except OSError:
            pass
