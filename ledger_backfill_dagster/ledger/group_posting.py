"""Small partitions posted together: one batch, one transaction, for many days.

A long daily history has thousands of partitions of a few entries each, and posting them one by
one paid the fixed cost of a partition (its lock, checkpoint, batch, balance check and completion:
five transactions) thousands of times (docs/performance.md, "Per partition"). Here consecutive
partitions whose entries fit in one batch (BATCH_SIZE) are posted as one: their locks are taken
together, their checkpoints opened together, their entries staged with their partition's key and
posted by the same statements as a single partition's batch, and every checkpoint advances in
that batch's transaction. Exactly-once is unchanged: the entries of every day in the group and
all their checkpoints commit together or not at all. Between days, the earliest partition's
version of a reference still wins (post_batch.sql orders by partition, then source row).

Only what is simple goes in a group: a partition that fits in a batch, whose rows all carry their
reference (a row without one may need the vanished-row check of `PartitionPoster`), with no
committed batch of its current plan to resume from, on a ledger with no entries from before
source row keys. Anything unusual (such a partition, a refused row, an unknown account, a
transient error, a busy partition) makes the group's members post one by one through
`PartitionPoster`, which resumes from whatever committed and reports as it always did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import errors as pgerrors
from tenacity import RetryCallState

from ledger_backfill_dagster.ledger import checkpoints
from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
from ledger_backfill_dagster.ledger.errors import (
    BalanceDriftError,
    PartitionBusyError,
    PausedError,
)
from ledger_backfill_dagster.ledger.posting import (
    BatchStats,
    PartitionPlan,
    PartitionPoster,
    PauseProbe,
    PostingOptions,
    PostingOutcome,
    PostingSessions,
    ProgressHook,
    _Batch,
    _Unposted,
    partition_lock_key,
    plan_digests,
    post_partition,
    stage_table,
    stop_if_asked,
    transient_retrying,
)
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.rows import named_row, one_row
from ledger_backfill_dagster.lib.sql_files import query

log = logging.getLogger(__name__)

# At most this many partitions in one group: each holds an advisory lock in the group's session
# (PostgreSQL's shared lock table holds max_locks_per_transaction × max_connections of them).
GROUP_MAX_PARTITIONS = 100

# The group's days locked in key order, the order every group takes them in (a single
# partition's poster holds one only), so groups never deadlock each other.
_LOCK_ALL = """
SELECT count(pg_advisory_lock(hashtextextended(k, 0)))
  FROM (SELECT k FROM unnest(%(keys)s::TEXT[]) AS k ORDER BY k) AS ordered
"""
_UNLOCK_ALL = (
    "SELECT count(pg_advisory_unlock(hashtextextended(k, 0))) FROM unnest(%(keys)s::TEXT[]) AS k"
)


def groupable(plan: PartitionPlan, options: PostingOptions) -> bool:
    """Whether a partition may post in a group (module docstring)."""
    entries = plan.entries
    if len(entries) > options.batch_size:
        return False
    return "reference_generated" not in entries or not bool(entries["reference_generated"].any())


class _PostAlone(Exception):
    """The group cannot be posted together: its members post one by one."""


@dataclass
class _Member:
    plan: PartitionPlan
    checkpoint: checkpoints.Checkpoint | None = None  # None: skipped (COMPLETED, same plan)
    outcome: PostingOutcome = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = PostingOutcome(
            self.plan.source_id, self.plan.partition_key, status="IN_PROGRESS"
        )
        self.outcome.to_process = len(self.plan.entries)
        self.outcome.rejected = self.plan.rejected


class GroupPoster:
    """Posts a group of small partitions in one batch; holds one connection and their locks."""

    def __init__(
        self, plans: list[PartitionPlan], run: PostingRun, rows: pd.DataFrame | None = None
    ) -> None:
        self.plans = plans
        self.rows = rows  # the plans' entries in one frame, if they were read as one
        self.options, self.sessions, self.verifier = run.options, run.sessions, run.verifier
        self.pause_probe, self.on_batch, self.stop = run.pause_probe, run.on_batch, run.stop
        self.members = [_Member(plan) for plan in plans]
        self.conn: psycopg.Connection | None = None
        self.completed = False  # every checkpoint of the group is COMPLETED
        self.committed = False  # the group's batch is in the ledger
        first = plans[0]
        self.source_id, self.source_type, self.run_id = (
            first.source_id,
            first.source_type,
            first.run_id,
        )

    def _lock_keys(self) -> list[str]:
        return [partition_lock_key(plan) for plan in self.plans]

    # -- the group, start to end --------------------------------------------------------------
    def run(self) -> list[PostingOutcome]:
        started = time.perf_counter()
        conn = self._connect_and_lock()
        if not self.options.initial_load:  # an initial load has none (ledger/load_mode.py)
            found = conn.execute(query("posting/unkeyed_entries_exist"), (self.source_id,))
            if one_row(found)[0]:
                raise _PostAlone("the ledger holds entries from before source row keys")
            conn.commit()
        self._open(conn)
        posting = [m for m in self.members if m.checkpoint is not None]
        with_rows = [m for m in posting if len(m.plan.entries)]
        stats = self._post_batch(conn, with_rows) if with_rows else {}
        # From here the group's entries are in the ledger: it ends as a partition would (its days
        # COMPLETED, PAUSED or FAILED), never by posting its days again one by one.
        self.committed = bool(with_rows)

        def reconnect(state: RetryCallState) -> None:
            log.warning(
                "partitions %s..%s: transient database error, retry %d of %d",
                self.plans[0].partition_key,
                self._last,
                state.attempt_number,
                self.options.max_retries,
            )
            self.close()

        for attempt in transient_retrying(self.options, reconnect):
            with attempt:
                # On a retry the failed attempt's connection is gone, and its locks with it.
                if self.conn is None:
                    self._connect_and_lock()
                self._finish_group(posting, with_rows)
        self._release()
        seconds = time.perf_counter() - started
        for member in self.members:
            member.outcome.status = checkpoints.COMPLETED
            member.outcome.seconds = seconds / len(self.members)
            member.outcome.group_size = len(self.members)
            batch = stats.get(member.plan.partition_key)
            if batch is not None and self.on_batch:
                self.on_batch(member.outcome, batch)
        return [m.outcome for m in self.members]

    def _finish_group(self, posting: list[_Member], with_rows: list[_Member]) -> None:
        """After the group's batch: the pause and stop checks, the balance check of the accounts
        it touched, and every day COMPLETED, as `PartitionPoster` does after its last batch."""
        conn = self.conn
        assert conn is not None
        if with_rows:  # as a partition's poster does after each batch
            stop_if_asked(
                conn,
                self.stop,
                self.pause_probe,
                f"partitions {self.plans[0].partition_key}..{self._last}",
                "their batch",
            )
        touched = set().union(*(m.outcome.touched_accounts for m in with_rows))
        if self.options.validate_balances and touched:
            drift = self.verifier.check(conn, touched)
            conn.commit()
            if drift:
                raise BalanceDriftError(
                    f"{posting[0].plan.partition_key}..{posting[-1].plan.partition_key}",
                    [(d.account_id, str(d.expected_balance), str(d.actual_balance)) for d in drift],
                )
        checkpoints.complete_group(
            conn, {m.checkpoint.id: m.outcome.checkpoint_summary() for m in posting if m.checkpoint}
        )
        self.completed = True

    def _connect_and_lock(self) -> psycopg.Connection:
        conn = self.conn = self.sessions.live()
        wait_ms = int(self.options.partition_lock_wait_seconds * 1000)
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
            conn.execute(_LOCK_ALL, {"keys": self._lock_keys()})
            conn.commit()
        except pgerrors.LockNotAvailable:
            if self.committed:  # taking the locks again after a lost connection
                raise PartitionBusyError(
                    self.source_id, f"{self.plans[0].partition_key}.."
                ) from None
            raise _PostAlone("a partition of the group is being posted by another run") from None
        return conn

    def _open(self, conn: psycopg.Connection) -> None:
        digests = plan_digests([m.plan.entries for m in self.members], self.rows)
        for member, digest in zip(self.members, digests, strict=True):
            member.plan.known_digest = digest
        try:
            opened, skipped = checkpoints.open_group(
                conn,
                source_id=self.source_id,
                source_type=self.source_type,
                run_id=self.run_id,
                members=[
                    checkpoints.GroupMember(
                        m.plan.partition_key, m.plan.digest, len(m.plan.entries), m.plan.rejected
                    )
                    for m in self.members
                ],
                force_redo=self.options.force_redo,
            )
        except checkpoints.GroupNotFresh as exc:
            raise _PostAlone(f"partition {exc} resumes from its own checkpoint") from None
        for member in self.members:
            key = member.plan.partition_key
            member.checkpoint = opened.get(key)
            member.outcome.skipped = key in skipped

    def _post_batch(
        self, conn: psycopg.Connection, members: list[_Member]
    ) -> dict[str, BatchStats]:
        """The group's one batch: the steps of `PartitionPoster._post_batch`, for every member's
        rows at once, and every member's checkpoint advanced in the same transaction."""
        t0 = time.perf_counter()
        frames = [m.plan.entries for m in members]
        if self.rows is not None and len(self.rows) == sum(len(f) for f in frames):
            # The same rows (days skipped as COMPLETED had none, nor did the others left out).
            frame = self.rows.reset_index(drop=True)
        else:
            frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        keys = pa.array(
            np.repeat([m.plan.partition_key for m in members], [len(f) for f in frames]),
            pa.string(),
        )
        table = stage_table(frame, keys)
        poster = PartitionPoster(
            self.sessions.connect, members[0].plan, self.options, sessions=self.sessions
        )
        params = poster._batch_params()
        with conn.transaction(), conn.cursor(row_factory=named_row) as cur:
            poster._stage(cur, _Batch(frame, table))
            poster._recognise_known_rows(cur, params)
            inserted = poster._insert_entries(cur, params)
            poster._lock_accounts(cur, frame)
            poster._move_balances(cur, 1, inserted)
            unposted = poster._classify_unposted(cur, 1, params, len(frame), inserted.posted)
            poster._refuse_duplicates(unposted)
            poster._record_unposted(cur, params, unposted)
            poster._reinstate_reversed(cur, unposted)
            t1 = time.perf_counter()
            counts = _per_partition(unposted)
            advance: dict[str, list[Any]] = {k: [] for k in _ADVANCE_ARRAYS}
            for member in members:
                entries = member.plan.entries
                key = member.plan.partition_key
                dup, con, already = (counts[kind].get(key, 0) for kind in _KINDS)
                posted = len(entries) - dup - con - already
                outcome = member.outcome
                outcome.posted, outcome.already_posted = posted, already
                outcome.duplicates, outcome.conflicts = dup, con
                outcome.touched_accounts = set(entries["debit_account_id"]) | set(
                    entries["credit_account_id"]
                )
                assert member.checkpoint is not None
                for name, value in zip(
                    _ADVANCE_ARRAYS,
                    (
                        member.checkpoint.id,
                        str(int(entries["source_row_id"].iloc[-1])),
                        entries["timestamp_utc"].max().tz_convert(None).to_pydatetime(),
                        len(entries),
                        posted + already,
                        dup,
                        con,
                    ),
                    strict=True,
                ):
                    advance[name].append(value)
            cur.execute(query("checkpoints/advance_many"), advance)
            if cur.rowcount != len(members):
                # A member's checkpoint moved since the group opened it (this batch committed
                # before and its acknowledgement was lost, or another run): resume one by one.
                raise _PostAlone("a checkpoint of the group moved under this run")
        t2 = time.perf_counter()
        share = (t2 - t0) / len(members), (t2 - t1) / len(members)
        stats = {}
        for member in members:
            o = member.outcome
            batch = BatchStats(
                1,
                len(member.plan.entries),
                o.posted + o.already_posted,
                o.duplicates,
                o.conflicts,
                *share,
            )
            o.batches.append(batch)
            stats[member.plan.partition_key] = batch
        return stats

    def _release(self) -> None:
        """Unlock the group's days and hand the connection on; a connection that cannot be
        unlocked is closed instead, which drops its locks too."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.execute(_UNLOCK_ALL, {"keys": self._lock_keys()})
            conn.commit()
        except psycopg.Error:
            conn.close()
        self.sessions.release(conn)

    def close(self) -> None:
        """After any error: drop the connection, and with it every lock it holds."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @property
    def _last(self) -> str:
        return self.plans[-1].partition_key

    def end(self, status: str, message: str, members: list[_Member] | None = None) -> None:
        """Mark the checkpoints this group opened (or those of `members`) PAUSED or FAILED, as a
        single partition's would be; nothing once the group is COMPLETED."""
        self.close()
        chosen = self.members if members is None else members
        opened = [m.checkpoint for m in chosen if m.checkpoint is not None]
        if not opened or self.completed:
            return
        try:
            with self.sessions.connect() as conn:
                conn.execute(
                    query("checkpoints/end_group"),
                    {
                        "ids": [c.id for c in opened],
                        "run_id": self.run_id,
                        "status": status,
                        "message": redact(message),
                    },
                )
                conn.commit()
        except psycopg.Error:
            log.exception("could not record checkpoint status %s", status)

    def members_of(self, plans: list[PartitionPlan]) -> list[_Member]:
        keys = {plan.partition_key for plan in plans}
        return [m for m in self.members if m.plan.partition_key in keys]


_KINDS = ("duplicates", "conflicts", "already_posted")
_ADVANCE_ARRAYS = (
    "ids",
    "last_ids",
    "last_ts",
    "processed",
    "successful",
    "duplicates",
    "conflicts",
)


def _per_partition(unposted: _Unposted) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {kind: {} for kind in _KINDS}
    for kind in _KINDS:
        for row in getattr(unposted, kind):
            counts[kind][row.partition_key] = counts[kind].get(row.partition_key, 0) + 1
    return counts


@dataclass(frozen=True)
class PostingRun:
    """What every partition of a run is posted with (the arguments of `post_partition`)."""

    connect: Callable[[], psycopg.Connection]
    options: PostingOptions
    sessions: PostingSessions
    verifier: BalanceVerifier
    pause_probe: PauseProbe | None = None
    on_batch: ProgressHook | None = None
    stop: threading.Event | None = None

    def alone(self, plan: PartitionPlan) -> PostingOutcome:
        return post_partition(
            self.connect,
            plan,
            self.options,
            self.pause_probe,
            self.on_batch,
            self.stop,
            self.sessions,
            self.verifier,
        )


def post_partitions(
    run: PostingRun, plans: list[PartitionPlan], whole: pd.DataFrame | None = None
) -> list[PostingOutcome]:
    """Post consecutive partitions in order: runs of small ones in groups, the rest alone.
    `whole`, if given, is the plans' entries in one frame (each plan's a consecutive slice)."""
    outcomes: list[PostingOutcome] = []
    offsets = np.cumsum([0, *(len(plan.entries) for plan in plans)])
    group: list[PartitionPlan] = []
    rows = 0
    first = 0  # index of the group's first plan

    def flush() -> None:
        nonlocal group, rows
        if len(group) == 1:
            outcomes.append(run.alone(group[0]))
        elif group:
            rows_of = None
            if whole is not None:
                rows_of = whole.iloc[offsets[first] : offsets[first + len(group)]]
            outcomes.extend(_post_group(run, group, rows_of))
        group, rows = [], 0

    for index, plan in enumerate(plans):
        if not groupable(plan, run.options):
            flush()
            outcomes.append(run.alone(plan))
            continue
        if group and (
            rows + len(plan.entries) > run.options.batch_size or len(group) >= GROUP_MAX_PARTITIONS
        ):
            flush()
        if not group:
            first = index
        group.append(plan)
        rows += len(plan.entries)
    flush()
    return outcomes


def _post_group(
    run: PostingRun, plans: list[PartitionPlan], rows: pd.DataFrame | None
) -> list[PostingOutcome]:
    poster = GroupPoster(plans, run, rows)
    interrupted = "interrupted (run terminated); re-run the partition to resume"
    try:
        return poster.run()
    except PausedError as exc:
        poster.end(checkpoints.PAUSED, str(exc))
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__.endswith(
            "InterruptedError"
        ):
            poster.end(checkpoints.PAUSED, interrupted)
            raise PausedError(f"partitions {plans[0].partition_key}..: {interrupted}") from exc
        if poster.committed:
            # Its entries are in: the group fails as a partition would, naming why.
            poster.end(checkpoints.FAILED, redact(f"{type(exc).__name__}: {exc}"))
            raise
        poster.close()
        log.warning(
            "partitions %s..%s: posted one by one (%s: %s)",
            plans[0].partition_key,
            plans[-1].partition_key,
            type(exc).__name__,
            redact(str(exc)),
        )
    outcomes = []
    for index, plan in enumerate(plans):
        try:
            outcomes.append(run.alone(plan))
        except BaseException:
            # The days the group opened that this run now never reaches: not left IN_PROGRESS.
            poster.end(
                checkpoints.PAUSED,
                f"not posted: partition {plan.partition_key} before it stopped the run; "
                "re-run to resume",
                poster.members_of(plans[index + 1 :]),
            )
            raise
    return outcomes
