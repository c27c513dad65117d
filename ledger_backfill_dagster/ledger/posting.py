"""The Batch Processor and Ledger Posting Module: post one partition, batch by batch.

Each batch is one transaction that COPYs the entries into a temporary stage, inserts them
set-based (entries and outbox rows), then locks every account it touches in ascending id order
and moves their balances, names the outcome of every row it did not post (duplicate, conflict,
or already posted by this very source row), and advances the checkpoint. Either all of that
commits or none of it does, so a crash at any moment loses at most the batch in flight and a
re-run resumes after the last committed batch.

Transient database errors (lost connection, restart, serialization failure, deadlock) retry the
batch with exponential backoff (tenacity); permanent ones fail at once, naming the rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import errors as pgerrors
from psycopg import sql
from tenacity import (
    RetryCallState,
    Retrying,
)

from ledger_backfill_dagster.entries.validation import POSTABLE_COLUMNS
from ledger_backfill_dagster.ledger import checkpoints
from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
from ledger_backfill_dagster.ledger.errors import (
    BalanceDriftError,
    DuplicateEntriesError,
    InvariantError,
    PartitionBusyError,
    PausedError,
    UnknownAccountsError,
)
from ledger_backfill_dagster.ledger.rejects import record_refused_row
from ledger_backfill_dagster.ledger.rollback import reinstate_reversed
from ledger_backfill_dagster.lib.errors import transient_retrying as lib_transient_retrying
from ledger_backfill_dagster.lib.rows import named_row, one_row
from ledger_backfill_dagster.lib.sql_files import query

log = logging.getLogger(__name__)

# SQLSTATEs that blame one row's values, not the batch or the database: a data exception (class
# 22), an index entry or value beyond a limit (54000), a check or NOT NULL constraint.
ROW_REFUSAL_CLASSES = ("22",)
ROW_REFUSAL_SQLSTATES = {"54000", "23514", "23502"}


def refuses_row(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate in ROW_REFUSAL_SQLSTATES or sqlstate[:2] in ROW_REFUSAL_CLASSES


def refusal_reason(exc: psycopg.Error) -> str:
    """The reject reason: the database's own words (first line), which name no secret."""
    primary = exc.diag.message_primary if exc.diag else None
    message = (primary or str(exc)).splitlines()[0][:500]
    return f"database refused the row ({exc.sqlstate}): {message}"


@dataclass(frozen=True)
class PostingOptions:
    batch_size: int = 10_000  # docs/decisions.md, "BATCH_SIZE 10,000 by default"
    skip_duplicates: bool = True
    validate_balances: bool = True
    checkpoint_interval: int = 10
    max_retries: int = 3
    retry_delay_ms: int = 1000
    force_redo: bool = False
    # How long to wait for the partition's lock: a killed run's session can hold it until the
    # server notices the client is gone (client_connection_check_interval, below).
    partition_lock_wait_seconds: float = 30.0
    # LOAD_MODE=initial (ledger/load_mode.py): the ledger holds no entry without a source row key,
    # and this source had entries only in `prior_partitions` when the load began, so the scans
    # for legacy entries and (in partitions no run has opened since) vanished ones, whose indexes
    # the load dropped, are not needed.
    initial_load: bool = False
    prior_partitions: frozenset[str] = frozenset()


@dataclass
class PartitionPlan:
    source_id: str
    source_type: str
    partition_key: str
    run_id: str
    entries: pd.DataFrame  # validated entries (validation.POSTABLE_COLUMNS)
    rejected: int = 0
    known_digest: str | None = None  # `digest`, when computed with other plans' (plan_digests)

    @property
    def digest(self) -> str:
        """Identifies the work: which source rows, with which content, make up this partition."""
        if self.known_digest is None:
            self.known_digest = plan_digests([self.entries])[0]
        return self.known_digest


def plan_digests(frames: list[pd.DataFrame], whole: pd.DataFrame | None = None) -> list[str]:
    """Each frame's plan digest: a hash of its source row ids and of each row's content.

    A row's content hash depends on that row alone, so frames of the same dtypes are hashed in
    one pass and the result cut per frame: the same digests, without paying pandas' per-column
    cost once per partition (a long daily history has thousands of small ones). `whole`, if
    given, is the frames already in one (each a consecutive slice of it)."""
    if not frames:
        return []
    if whole is None:
        if any(not f.dtypes.equals(frames[0].dtypes) for f in frames[1:]):
            return [plan_digests([f])[0] for f in frames]
        whole = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    ids = whole["source_row_id"].astype("int64").to_numpy()
    content = pd.util.hash_pandas_object(whole, index=False).to_numpy()
    digests, start = [], 0
    for frame in frames:
        stop = start + len(frame)
        digests.append(
            hashlib.sha256(ids[start:stop].tobytes() + content[start:stop].tobytes()).hexdigest()[
                :32
            ]
        )
        start = stop
    return digests


@dataclass
class BatchStats:
    batch: int
    rows: int
    posted: int
    duplicates: int
    conflicts: int
    seconds: float
    checkpoint_seconds: float


@dataclass
class PostingOutcome:
    source_id: str
    partition_key: str
    status: str
    skipped: bool = False
    to_process: int = 0
    resumed_after: int | None = None
    posted: int = 0
    already_posted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    refused: int = 0  # rows the database refused, quarantined at posting
    batches: list[BatchStats] = field(default_factory=list)
    seconds: float = 0.0
    retries: int = 0
    touched_accounts: set[str] = field(default_factory=set)
    group_size: int = 1  # partitions whose entries were posted in the same batch (group_posting)

    def checkpoint_summary(self) -> dict:
        """What this run did to the partition, merged into its checkpoint's metadata."""
        return {
            "last_run_posted": self.posted,
            "last_run_already_posted": self.already_posted,
            "last_run_duplicates": self.duplicates,
            "last_run_conflicts": self.conflicts,
            "last_run_batches": len(self.batches),
        }

    @property
    def entries_per_second(self) -> float:
        rows = sum(b.rows for b in self.batches)
        return rows / self.seconds if self.seconds > 0 else 0.0


PauseProbe = Callable[[psycopg.Connection], bool]
ProgressHook = Callable[[PostingOutcome, BatchStats], None]


def stop_if_asked(
    conn: psycopg.Connection,
    stop: threading.Event | None,
    pause_probe: PauseProbe | None,
    subject: str,
    after: str,
) -> None:
    """After a committed batch: PausedError if the run was terminated (`stop`) or a pause was
    requested (`pause_probe`, read in its own short transaction)."""
    if stop is not None and stop.is_set():
        raise PausedError(
            f"{subject}: stopped after {after} because the run was terminated; re-run the "
            "partition to resume"
        )
    if pause_probe is not None:
        paused = pause_probe(conn)
        conn.commit()
        if paused:
            raise PausedError(
                f"{subject}: paused on request after {after}; re-run the partition to resume"
            )


def partition_lock_key(plan: PartitionPlan) -> str:
    """The key of the session advisory lock a partition is posted under (by one run at a time)."""
    return f"ledger_backfill:{plan.source_type}:{plan.source_id}:{plan.partition_key}"


def transient_retrying(
    options: PostingOptions, before_sleep: Callable[[RetryCallState], None]
) -> Retrying:
    """lib.errors.transient_retrying with the run's MAX_RETRIES and RETRY_DELAY."""
    return lib_transient_retrying(options.max_retries, options.retry_delay_ms, before_sleep)


def pause_requested(run_started: datetime, source_id: str) -> PauseProbe:
    def probe(conn: psycopg.Connection) -> bool:
        row = conn.execute(query("posting/pause_requested"), (source_id, run_started)).fetchone()
        return row is not None

    return probe


# The advisory lock an initial load holds exclusively for its whole run (ledger/load_mode.py) and
# every live posting session holds shared: the two never post at the same time.
LOAD_LOCK_KEY = 0x1ED6E6


def _keep_out_of_initial_load(conn: psycopg.Connection) -> None:
    """Hold the load lock shared for the session: wait while an initial load runs."""
    taken = conn.execute("SELECT pg_try_advisory_lock_shared(%s)", (LOAD_LOCK_KEY,)).fetchone()
    if not (taken and taken[0]):
        log.warning("an initial load is running (LOAD_MODE=initial): waiting until it ends")
        # However long the load takes: the server's lock and statement timeouts do not apply.
        conn.execute("SELECT set_config('lock_timeout', '0', false)")
        conn.execute("SELECT set_config('statement_timeout', '0', false)")
        conn.execute("SELECT pg_advisory_lock_shared(%s)", (LOAD_LOCK_KEY,))
        conn.execute("RESET lock_timeout")
        conn.execute("RESET statement_timeout")


def end_with_its_client(conn: psycopg.Connection) -> None:
    """A session whose client died (SIGKILL, lost host) ends within a second even while it
    waits on a lock, releasing its locks (a partition's, accounts', an initial load's)."""
    if conn.info.server_version >= 140000:
        try:
            conn.execute("SELECT set_config('client_connection_check_interval', '1000', false)")
        except pgerrors.InvalidParameterValue:  # a platform without the check: carry on
            conn.rollback()


def _set_up_session(conn: psycopg.Connection, live: bool = True) -> None:
    end_with_its_client(conn)
    # A batch's statements are many small index probes that the planner prices like one big scan:
    # from about 4,000 rows a batch their estimated cost passes jit_above_cost and PostgreSQL
    # spends ~300 ms compiling each (measured on mark_known_rows at 10,000 rows: 290 ms of JIT for
    # 45 ms of work). Nothing here gains from JIT.
    conn.execute("SELECT set_config('jit', 'off', false)")
    if live:
        _keep_out_of_initial_load(conn)
    conn.execute(query("posting/create_post_stage"))
    conn.commit()


class PostingSessions:
    """Idle posting connections, reused from one partition to the next.

    Opening a connection, setting it up and creating its temporary stage cost about as much as
    posting a small partition; a 3-year backfill has 1,096 of them. A connection goes back here
    only healthy, idle and with its partition lock released; anything else is closed, which also
    drops every lock it held."""

    def __init__(self, connect: Callable[[], psycopg.Connection], live: bool = True) -> None:
        self.connect = connect
        self.live_mode = live  # False: the sessions of an initial load, which holds the lock
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def acquire(self) -> tuple[psycopg.Connection, bool]:
        """A connection, and whether it is new (and so still needs its session set-up)."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn, False
        return self.connect(), True

    def live(self) -> psycopg.Connection:
        """An idle session that still answers (one may have died with a server restart since it
        was last used), or a new one set up for posting."""
        conn, new = self.acquire()
        if not new:
            try:
                conn.execute("SELECT 1")
            except psycopg.OperationalError:
                conn.close()
                conn, new = self.connect(), True
        if new:
            try:
                _set_up_session(conn, self.live_mode)
            except BaseException:
                conn.close()
                raise
        return conn

    def release(self, conn: psycopg.Connection) -> None:
        healthy = not conn.closed and not conn.broken
        if healthy and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> PostingSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Batch:
    frame: pd.DataFrame  # the entries, for their ids, accounts and timestamps
    table: pa.Table  # the same rows' STAGE_COLUMNS, a zero-copy slice, for COPY


# The one statement built in code: its column list is the entry contract's (POSTABLE_COLUMNS) after
# the partition's key, then whether the row's reference repeats, in the order the batch's CSV
# carries them.
STAGE_COLUMNS = ("partition_key", *POSTABLE_COLUMNS, "reference_repeats")
_COPY_STAGE = "COPY post_stage (" + ", ".join(STAGE_COLUMNS) + ") FROM STDIN (FORMAT csv)"
# posting/post_batch.sql's conflict clause: none first (a plain INSERT in a savepoint), then, if a
# unique key was met, ON CONFLICT DO NOTHING on either unique key: (ledger_id, reference_id), or
# (source, source_row_key) should a concurrent run have posted the same source row.
_CONFLICT_CLAUSE = {False: "", True: "ON CONFLICT DO NOTHING"}


def stage_table(entries: pd.DataFrame, partition_keys: str | pa.Array) -> pa.Table:
    """Entries as the batch's CSV carries them (STAGE_COLUMNS): a partition's, with its key, or
    a group's, with each row's partition key. `reference_repeats` marks every row whose
    (ledger_id, reference_id) another row of these entries carries: only those are ranked by
    posting/post_batch.sql (a batch, being a slice, repeats no more than the whole)."""
    table = pa.Table.from_pandas(entries[POSTABLE_COLUMNS], preserve_index=False)
    if isinstance(partition_keys, str):
        partition_keys = pc.fill_null(pa.nulls(len(table), pa.string()), partition_keys)
    repeats = entries.duplicated(["ledger_id", "reference_id"], keep=False).to_numpy()
    table = table.append_column("reference_repeats", pa.array(repeats, pa.bool_()))
    return table.add_column(0, "partition_key", partition_keys)


# The outcomes posting/classify_unposted.sql names.
DUPLICATE, CONFLICT, ALREADY_POSTED = "DUPLICATE", "CONFLICT", "ALREADY_POSTED"


@dataclass(frozen=True)
class _Unposted:
    """The staged rows a batch did not insert, by outcome: rows of posting/classify_unposted.sql,
    read by column name (source_row_id, line_number, ledger_id, reference_id, existing_entry_id,
    outcome, same_source_row)."""

    duplicates: list[Any]
    conflicts: list[Any]
    already_posted: list[Any]
    unmatched: list[Any]  # an outcome the query should never give, or no entry matched

    @classmethod
    def of(cls, rows: list[Any]) -> _Unposted:
        return cls(
            duplicates=[o for o in rows if o.outcome == DUPLICATE],
            conflicts=[o for o in rows if o.outcome == CONFLICT],
            already_posted=[o for o in rows if o.outcome == ALREADY_POSTED],
            unmatched=[
                o
                for o in rows
                if o.outcome not in {DUPLICATE, CONFLICT, ALREADY_POSTED}
                or o.existing_entry_id is None
            ],
        )


class PartitionPoster:
    """Posts one partition's plan; holds one connection and the partition's advisory lock."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        plan: PartitionPlan,
        options: PostingOptions,
        pause_probe: PauseProbe | None = None,
        on_batch: ProgressHook | None = None,
        stop: threading.Event | None = None,
        sessions: PostingSessions | None = None,
        verifier: BalanceVerifier | None = None,
    ) -> None:
        self.connect = connect
        self.plan = plan
        self.options = options
        self.pause_probe = pause_probe
        self.on_batch = on_batch
        self.stop = stop  # set when the run is terminated: stop after the current batch
        self.sessions = sessions or PostingSessions(connect)
        self.owns_sessions = sessions is None
        self.verifier = verifier or BalanceVerifier()
        self.conn: psycopg.Connection | None = None
        self.locked = False  # this poster holds the partition's advisory lock on self.conn
        self.outcome = PostingOutcome(plan.source_id, plan.partition_key, status="IN_PROGRESS")
        self.checkpoint: checkpoints.Checkpoint | None = None
        self._committed_last_id: str | None = None  # last row of the last committed batch
        # Entries this source posted in this partition whose source row is gone (hold_new_rows)
        self._vanished: list[int] = []
        # Entries from before source row keys that a row on their old line may have posted
        self._unclaimed_legacy: list[int] = []
        self._plain_insert = True  # until a batch meets a unique key (_insert_entries)

    # -- connection ---------------------------------------------------------------------------
    def _lock_key(self) -> str:
        return partition_lock_key(self.plan)

    def _ensure_connection(self) -> psycopg.Connection:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return self.conn
        self._close()
        conn = self.sessions.live()
        wait_ms = int(self.options.partition_lock_wait_seconds * 1000)
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{wait_ms}ms",))
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (self._lock_key(),))
            conn.execute("RESET lock_timeout")
            conn.commit()
        except pgerrors.LockNotAvailable:
            conn.close()
            raise PartitionBusyError(self.plan.source_id, self.plan.partition_key) from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.locked = True
        return conn

    def _close(self) -> None:
        """Drop the connection (and with it every lock it holds): after any error."""
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None
                self.locked = False

    def _release(self) -> None:
        """Unlock the partition and hand the healthy connection on to the next partition."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if self.locked and not conn.closed and not conn.broken:
                conn.rollback()
                conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self._lock_key(),)
                )
                conn.commit()
        except psycopg.Error:
            conn.close()
        finally:
            self.locked = False
        self.sessions.release(conn)

    def _retrying(self) -> Retrying:
        def count(state: RetryCallState) -> None:
            self.outcome.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "partition %s: transient database error, retry %d of %d: %s",
                self.plan.partition_key,
                state.attempt_number,
                self.options.max_retries,
                type(exc).__name__,
            )
            self._close()

        return transient_retrying(self.options, count)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> PostingOutcome:
        started = time.perf_counter()
        try:
            for attempt in self._retrying():
                with attempt:
                    self._open()
            if self.outcome.skipped:
                return self.outcome
            for number, batch in enumerate(self._pending_batches(), start=1):
                self._post_or_isolate(number, batch)
                for attempt in self._retrying():
                    with attempt:
                        self._after_batch(number)
            self._complete()
            self._release()
        except PausedError as exc:
            self._finish(checkpoints.PAUSED, str(exc))
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) or type(exc).__name__.endswith(
                "InterruptedError"
            ):
                # Terminate (UI), SIGTERM or Ctrl-C: a pause, not a failure to retry. Raised as
                # PausedError so the step's RetryPolicy does not quietly carry on posting.
                message = "interrupted (run terminated); re-run the partition to resume"
                self._finish(checkpoints.PAUSED, message)
                raise PausedError(f"partition {self.plan.partition_key}: {message}") from exc
            elif not isinstance(exc, PartitionBusyError):
                self._finish(checkpoints.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.outcome.seconds = time.perf_counter() - started
            if self.outcome.skipped:
                self._release()
            self._close()
            if self.owns_sessions:
                self.sessions.close()
        return self.outcome

    def _open(self) -> None:
        conn = self._ensure_connection()
        checkpoint, skip = checkpoints.open_checkpoint(
            conn,
            source_id=self.plan.source_id,
            source_type=self.plan.source_type,
            partition_key=self.plan.partition_key,
            run_id=self.plan.run_id,
            plan_digest=self.plan.digest,
            to_process=len(self.plan.entries),
            rejected=self.plan.rejected,
            force_redo=self.options.force_redo,
        )
        self.checkpoint = checkpoint
        last = checkpoint.last_processed_id
        self._committed_last_id = None if last is None else str(last)
        self.outcome.rejected = self.plan.rejected
        self.outcome.to_process = len(self.plan.entries)
        self.outcome.resumed_after = checkpoint.last_processed_id
        if skip:
            self.outcome.skipped = True
            self.outcome.status = checkpoints.COMPLETED
            return
        self._vanished = self._vanished_entries(conn)
        self._unclaimed_legacy = self._legacy_entries(conn)

    def _legacy_entries(self, conn: psycopg.Connection) -> list[int]:
        """Only a ledger posted before migration 008 has entries without a key; on any other
        the partial index answers at once and the partition's rows are not sent. An initial load
        has none (load_mode refuses to start over them) and has dropped that index."""
        if self.options.initial_load:
            return []
        with conn.cursor(row_factory=named_row) as cur:
            found = cur.execute(
                query("posting/unkeyed_entries_exist"), (self.plan.source_id,)
            ).fetchone()
            if not (found and found.unkeyed):
                conn.commit()
                return []
            entries = self.plan.entries
            rows = cur.execute(
                query("posting/legacy_entries_unclaimed"),
                {
                    "source_id": self.plan.source_id,
                    "row_ids": entries["source_row_id"].astype("int64").tolist(),
                    "ledger_ids": entries["ledger_id"].astype(str).tolist(),
                    "reference_ids": entries["reference_id"].astype(str).tolist(),
                },
            ).fetchall()
        conn.commit()
        return [row.id for row in rows]

    def _vanished_entries(self, conn: psycopg.Connection) -> list[int]:
        """Only rows without a reference can be held beside a vanished entry (a row with one is
        recognised by it), so a plan without such rows never asks."""
        entries = self.plan.entries
        if "reference_generated" not in entries or not entries["reference_generated"].any():
            return []
        if (
            self.options.initial_load
            and self.checkpoint is not None
            and self.checkpoint.fresh
            and self.plan.partition_key not in self.options.prior_partitions
        ):
            # This source had nothing in this partition when the load began, and no run has
            # opened it since (its checkpoint is new): nothing of it can have vanished. The
            # lineage index this query needs is one the load dropped.
            return []
        with conn.cursor(row_factory=named_row) as cur:
            rows = cur.execute(
                query("posting/vanished_entries"),
                {
                    "source_id": self.plan.source_id,
                    "partition_key": self.plan.partition_key,
                    "keys": entries["source_row_key"].astype(str).tolist(),
                },
            ).fetchall()
        conn.commit()
        return [row.id for row in rows]

    def _pending_batches(self) -> list[_Batch]:
        entries = self.plan.entries
        last = self.checkpoint.last_processed_id if self.checkpoint else None
        if last is not None:
            entries = entries.loc[entries["source_row_id"] > last]
        # Converted to Arrow once and sliced per batch: slices copy nothing, and building a
        # pandas copy per batch left cyclic garbage that held memory until a full collection.
        table = stage_table(entries, self.plan.partition_key)
        size = self.options.batch_size
        return [
            _Batch(entries.iloc[i : i + size], table.slice(i, size))
            for i in range(0, len(entries), size)
        ]

    def _batch_params(self) -> dict[str, str]:
        """The parameters every statement of a batch names the partition and run by."""
        return {
            "source_id": self.plan.source_id,
            "source_type": self.plan.source_type,
            "partition_key": self.plan.partition_key,
            "run_id": self.plan.run_id,
        }

    def _post_batch(self, number: int, pending: _Batch) -> None:
        """One batch, one transaction: every step below runs in it, in this order, and the
        checkpoint commits with the entries or not at all."""
        batch = pending.frame
        conn = self._ensure_connection()
        assert self.checkpoint is not None
        t0 = time.perf_counter()
        params = self._batch_params()
        last_id = str(int(batch["source_row_id"].iloc[-1]))
        committed_before = False
        with conn.transaction(), conn.cursor(row_factory=named_row) as cur:
            self._stage(cur, pending)
            self._recognise_known_rows(cur, params)
            inserted = self._insert_entries(cur, params)
            wanted = self._lock_accounts(cur, batch)
            self._move_balances(cur, number, inserted)
            unposted = self._classify_unposted(cur, number, params, len(batch), inserted.posted)
            self._refuse_duplicates(unposted)
            self._record_unposted(cur, params, unposted)
            self._reinstate_reversed(cur, unposted)
            t1 = time.perf_counter()
            advanced = self._advance_checkpoint(
                cur,
                last_id=last_id,
                last_ts=batch["timestamp_utc"].max().tz_convert(None).to_pydatetime(),
                processed=len(batch),
                successful=inserted.posted + len(unposted.already_posted),
                duplicates=len(unposted.duplicates),
                conflicts=len(unposted.conflicts),
            )
            if not advanced:
                # This batch committed before, but the acknowledgement of its COMMIT was lost
                # and the batch was retried: it found every row ALREADY_POSTED. Roll the retry
                # back (it changed nothing) instead of counting the batch twice.
                self._assert_committed_before(cur, number, last_id)
                committed_before = True
                raise psycopg.Rollback()
        self._committed_last_id = last_id
        if committed_before:
            log.warning(
                "partition %s: batch %d had committed before its acknowledgement was lost;"
                " not counted twice",
                self.plan.partition_key,
                number,
            )
        t2 = time.perf_counter()
        posted, already = inserted.posted, len(unposted.already_posted)
        duplicates, conflicts = len(unposted.duplicates), len(unposted.conflicts)
        stats = BatchStats(
            number, len(batch), posted + already, duplicates, conflicts, t2 - t0, t2 - t1
        )
        self.outcome.posted += posted
        self.outcome.already_posted += already
        self.outcome.duplicates += duplicates
        self.outcome.conflicts += conflicts
        self.outcome.batches.append(stats)
        self.outcome.touched_accounts |= wanted
        if self.on_batch:
            self.on_batch(self.outcome, stats)

    # -- the steps of a batch, in the order _post_batch runs them -------------------------------
    @staticmethod
    def _stage(cur: psycopg.Cursor[Any], pending: _Batch) -> None:
        """COPY the batch's entries into the connection's temporary stage."""
        with cur.copy(_COPY_STAGE) as copy:
            copy.write(_csv_bytes(pending.table))

    def _recognise_known_rows(self, cur: psycopg.Cursor[Any], params: dict[str, str]) -> None:
        """Before anything is inserted: point each staged row this source already posted at its
        entry, and hold new rows beside entries whose source row vanished. Never skipped, not
        even in an initial load: a row known under another reference must drop out of the
        batch's ranking of references (post_batch.sql), or a new row carrying that reference is
        neither posted nor classified."""
        if self._unclaimed_legacy:
            cur.execute(
                query("posting/mark_known_rows"),
                {**params, "unclaimed_legacy": self._unclaimed_legacy},
            )
        else:
            cur.execute(query("posting/mark_known_rows_by_key"), params)
        if self._vanished:
            cur.execute(query("posting/hold_new_rows"), {"vanished": self._vanished})

    def _insert_entries(self, cur: psycopg.Cursor[Any], params: dict[str, str]) -> Any:
        """Insert the batch set-based: entries, their outbox rows, and the staged rows marked
        posted. The row's `posted`, `outbox_rows` and `marked` count each.

        A plain INSERT first, in a savepoint: rows this source already posted are out of the
        batch (`_recognise_known_rows`), so on a backfill only a duplicate or conflicting
        reference, or a concurrent run's row, meets a unique key. Then the savepoint is rolled
        back and the batch inserted again skipping those rows, which are classified after; the
        rest of the partition's batches skip them from the start."""
        if self._plain_insert:
            try:
                with cur.connection.transaction():
                    return one_row(cur.execute(_post_batch(skip_conflicts=False), params))
            except pgerrors.UniqueViolation:
                self._plain_insert = False
        return one_row(cur.execute(_post_batch(skip_conflicts=True), params))

    def _lock_accounts(self, cur: psycopg.Cursor[Any], batch: pd.DataFrame) -> set[str]:
        """Lock every account the batch touches, in ascending id order; an account the ledger
        does not know fails the batch. Returns the accounts the batch touches."""
        locked = {row.id for row in cur.execute(query("posting/lock_batch_accounts")).fetchall()}
        wanted = set(batch["debit_account_id"]) | set(batch["credit_account_id"])
        if missing := sorted(wanted - locked):
            raise UnknownAccountsError(self.plan.partition_key, missing)
        return wanted

    @staticmethod
    def _move_balances(cur: psycopg.Cursor[Any], number: int, inserted: Any) -> None:
        """Move the balances of the entries inserted, netted per account, and check that every
        entry got its outbox row and its staged row, and every account its update."""
        moved = one_row(cur.execute(query("posting/apply_batch_balances")))
        if not (
            moved.accounts_expected == moved.accounts_moved
            and inserted.posted == inserted.outbox_rows == inserted.marked
        ):
            raise InvariantError(
                f"batch {number}: posted {inserted.posted}, outbox {inserted.outbox_rows}, "
                f"marked {inserted.marked}, balances moved {moved.accounts_moved} of "
                f"{moved.accounts_expected}"
            )

    @staticmethod
    def _classify_unposted(
        cur: psycopg.Cursor[Any], number: int, params: dict[str, str], staged: int, posted: int
    ) -> _Unposted:
        """Name the outcome of every staged row not inserted; every row must have one."""
        rows = cur.execute(query("posting/classify_unposted"), params).fetchall()
        unposted = _Unposted.of(rows)
        if unposted.unmatched or posted + len(rows) != staged:
            raise InvariantError(
                f"batch {number}: {staged} rows staged, {posted} posted, "
                f"{len(rows)} classified, {len(unposted.unmatched)} unmatched"
            )
        return unposted

    def _refuse_duplicates(self, unposted: _Unposted) -> None:
        """With SKIP_DUPLICATES off, a duplicate fails the batch instead of being skipped."""
        if unposted.duplicates and not self.options.skip_duplicates:
            raise DuplicateEntriesError(
                self.plan.partition_key,
                [(o.ledger_id, o.reference_id, o.line_number) for o in unposted.duplicates],
            )

    @staticmethod
    def _record_unposted(
        cur: psycopg.Cursor[Any], params: dict[str, str], unposted: _Unposted
    ) -> None:
        """Keep the skipped duplicates and the held conflicts queryable, against the entry each
        one matched."""
        for name, rows in (
            ("posting/record_duplicates", unposted.duplicates),
            ("posting/record_conflicts", unposted.conflicts),
        ):
            if rows:
                cur.execute(
                    query(name),
                    {
                        **params,
                        "source_row_ids": [o.source_row_id for o in rows],
                        "existing_ids": [o.existing_entry_id for o in rows],
                        "same_source_row": [o.same_source_row for o in rows],
                    },
                )

    def _reinstate_reversed(self, cur: psycopg.Cursor[Any], unposted: _Unposted) -> None:
        """A row whose entry a rollback reversed is re-applied (ledger/rollback.py)."""
        if unposted.already_posted:
            reinstate_reversed(
                cur, [o.existing_entry_id for o in unposted.already_posted], self.plan.run_id
            )

    def _advance_checkpoint(
        self,
        cur: psycopg.Cursor[Any],
        *,
        last_id: str,
        last_ts: datetime,
        processed: int,
        successful: int,
        duplicates: int,
        conflicts: int,
    ) -> bool:
        """Advance the checkpoint past `last_id` in the batch's transaction; False when it was not
        where this poster last left it (see checkpoints/advance.sql)."""
        assert self.checkpoint is not None
        cur.execute(
            query("checkpoints/advance"),
            {
                "id": self.checkpoint.id,
                "previous_last_id": self._committed_last_id,
                "last_id": last_id,
                "last_ts": last_ts,
                "processed": processed,
                "successful": successful,
                "duplicates": duplicates,
                "conflicts": conflicts,
            },
        )
        return cur.rowcount == 1

    def _post_or_isolate(self, number: int, batch: _Batch) -> None:
        """Post the batch; if the database refuses one of its rows (a value it cannot store, an
        index entry too large), find that row by halving and quarantine it with the database's
        reason: its neighbours still post, and the day does not fail on every re-run."""
        try:
            for attempt in self._retrying():
                with attempt:
                    self._post_batch(number, batch)
        except psycopg.Error as exc:
            if not refuses_row(exc):
                raise
            self._close()
            rows = len(batch.frame)
            if rows == 1:
                for attempt in self._retrying():
                    with attempt:
                        self._quarantine(number, batch, exc)
                return
            half = rows // 2
            for part in (
                _Batch(batch.frame.iloc[:half], batch.table.slice(0, half)),
                _Batch(batch.frame.iloc[half:], batch.table.slice(half)),
            ):
                self._post_or_isolate(number, part)

    def _quarantine(self, number: int, batch: _Batch, refusal: psycopg.Error) -> None:
        """One refused row: a reject (stage `post`) and the checkpoint past it, in one
        transaction, so the accounting still adds up and a resume does not try it again."""
        conn = self._ensure_connection()
        assert self.checkpoint is not None
        row = batch.frame.iloc[0]
        last_id = str(int(row["source_row_id"]))
        reason = refusal_reason(refusal)
        with conn.transaction(), conn.cursor(row_factory=named_row) as cur:
            record_refused_row(
                cur,
                self.plan.source_id,
                self.plan.source_type,
                self.plan.partition_key,
                {name: row[name] for name in POSTABLE_COLUMNS if name in row.index},
                reason,
                self.plan.run_id,
            )
            advanced = self._advance_checkpoint(
                cur,
                last_id=last_id,
                last_ts=row["timestamp_utc"].tz_convert(None).to_pydatetime(),
                processed=1,
                successful=0,
                duplicates=0,
                conflicts=0,
            )
            if not advanced:
                self._assert_committed_before(cur, number, last_id)
                raise psycopg.Rollback()
        self._committed_last_id = last_id
        self.outcome.refused += 1
        log.warning(
            "partition %s: source row %s (line %s) refused by the database and quarantined: %s",
            self.plan.partition_key,
            last_id,
            row.get("line_number"),
            reason,
        )

    def _assert_committed_before(self, cur: psycopg.Cursor[Any], number: int, last_id: str) -> None:
        assert self.checkpoint is not None
        row = cur.execute(query("checkpoints/last_committed"), (self.checkpoint.id,)).fetchone()
        if row is None or row.last_processed_id != last_id:
            raise InvariantError(
                f"batch {number}: the checkpoint of partition {self.plan.partition_key} moved "
                f"under this run (expected after row {self._committed_last_id}, found "
                f"{row.last_processed_id if row else 'no checkpoint'})"
            )

    def _after_batch(self, number: int) -> None:
        conn = self._ensure_connection()
        if self.options.validate_balances and number % self.options.checkpoint_interval == 0:
            self._check_balances(conn)
        stop_if_asked(
            conn,
            self.stop,
            self.pause_probe,
            f"partition {self.plan.partition_key}",
            f"batch {number}",
        )

    def _check_balances(self, conn: psycopg.Connection) -> None:
        if not self.outcome.touched_accounts:
            return
        drift = self.verifier.check(conn, self.outcome.touched_accounts)
        conn.commit()
        if drift:
            raise BalanceDriftError(
                self.plan.partition_key,
                [(d.account_id, str(d.expected_balance), str(d.actual_balance)) for d in drift],
            )

    def _complete(self) -> None:
        for attempt in self._retrying():
            with attempt:
                conn = self._ensure_connection()
                if self.options.validate_balances:
                    self._check_balances(conn)
                assert self.checkpoint is not None
                checkpoints.finish(
                    conn,
                    self.checkpoint.id,
                    checkpoints.COMPLETED,
                    metadata=self.outcome.checkpoint_summary(),
                )
        self.outcome.status = checkpoints.COMPLETED

    def _finish(self, status: str, message: str) -> None:
        self.outcome.status = status
        if self.checkpoint is None:
            return
        self._close()
        try:
            with self.connect() as conn:
                checkpoints.finish(
                    conn, self.checkpoint.id, status, message, self.outcome.checkpoint_summary()
                )
        except psycopg.Error:
            log.exception("could not record checkpoint status %s", status)


@cache
def _post_batch(skip_conflicts: bool) -> sql.Composed:
    clause = sql.SQL(_CONFLICT_CLAUSE[skip_conflicts])
    return sql.SQL(query("posting/post_batch")).format(conflict_clause=clause)


def _csv_bytes(table: pa.Table) -> bytes:
    """The batch as CSV for COPY: strings always quoted, so "" stays an empty string and an
    unquoted empty field is NULL."""
    buffer = io.BytesIO()
    # In one chunk per column: pyarrow's CSV writer (23.0) repeats rows when a column holds an
    # empty chunk beside differently chunked ones, as a group read from many days' files can.
    table = table.combine_chunks()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buffer.getvalue()


def post_partition(
    connect: Callable[[], psycopg.Connection],
    plan: PartitionPlan,
    options: PostingOptions,
    pause_probe: PauseProbe | None = None,
    on_batch: ProgressHook | None = None,
    stop: threading.Event | None = None,
    sessions: PostingSessions | None = None,
    verifier: BalanceVerifier | None = None,
) -> PostingOutcome:
    """Post one partition. Pass one `sessions` and one `verifier` to every partition of a run:
    connections are then reused, and each account's balance is summed in full once per run."""
    return PartitionPoster(
        connect, plan, options, pause_probe, on_batch, stop, sessions, verifier
    ).run()
