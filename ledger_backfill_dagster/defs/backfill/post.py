"""Stage 4, Batch Processor + Ledger Posting Module: post each partition exactly once."""

import gc
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import psycopg
import pyarrow as pa
from dagster._core.events import DagsterEvent

from ledger_backfill_dagster.defs.backfill.common import (
    GROUP,
    POOL,
    add_partition_metadata,
    partition_table,
    stage,
)
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.defs.partitions import backfill_policy, daily_partitions
from ledger_backfill_dagster.ledger import load_mode
from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
from ledger_backfill_dagster.ledger.errors import BalanceDriftError, PausedError, PostingError
from ledger_backfill_dagster.ledger.group_posting import (
    GROUP_MAX_PARTITIONS,
    PostingRun,
    post_partitions,
)
from ledger_backfill_dagster.ledger.load_mode import Load, LoadModeRefused
from ledger_backfill_dagster.ledger.posting import (
    BatchStats,
    PartitionPlan,
    PostingOutcome,
    PostingSessions,
    pause_requested,
)
from ledger_backfill_dagster.ledger.reject_guard import (
    HeldPartition,
    RejectGuard,
    held_message,
    top_reasons,
)
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import PostingSettings, SourceSettings
from ledger_backfill_dagster.resources.stage_store import StageStore, arrow_text


class _Progress:
    """Per-batch progress in the run's log: counts, rate, batch and checkpoint time, ETA."""

    def __init__(self, context: dg.AssetExecutionContext, total: int) -> None:
        self.context = context
        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.last_logged = 0.0
        self.lock = threading.Lock()

    def skip(self, rows: int) -> None:
        """A partition already COMPLETED: its rows are not work left, so not in the ETA."""
        with self.lock:
            self.total -= rows

    def __call__(self, outcome: PostingOutcome, batch: BatchStats) -> None:
        with self.lock:
            self.done += batch.rows
        now = time.perf_counter()
        if now - self.last_logged < 2.0 and self.done < self.total:
            return
        self.last_logged = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        self.context.log.info(
            f"{outcome.partition_key} batch {batch.batch}: {batch.rows} rows, {batch.posted} posted, "
            f"{batch.duplicates} duplicates, {batch.conflicts} conflicts in {batch.seconds * 1000:.0f} ms "
            f"(checkpoint {batch.checkpoint_seconds * 1000:.1f} ms) | run {self.done}/{self.total} "
            f"at {rate:,.0f} entries/s, ETA {eta:,.0f} s"
        )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy(),
    group_name=GROUP,
    kinds={"postgres"},
    deps=[validated_entries],
    pool=POOL,
    retry_policy=dg.RetryPolicy(
        max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
)
def posted_batches(
    context: dg.AssetExecutionContext,
    source: SourceSettings,
    posting: PostingSettings,
    ledger_db: LedgerDatabase,
) -> dg.MaterializeResult:
    """Validated entries posted to the ledger, BATCH_SIZE per transaction.

    Each batch posts set-based (entries, both balances, outbox rows) and advances its partition's
    checkpoint in the same transaction. Re-running resumes after the last committed batch and
    skips COMPLETED partitions (FORCE_REDO to redo). Identical repeats of a reference are skipped
    as duplicates, changed ones held as conflicts; both are counted and queryable."""
    s = stage(context, source)
    ledger_db.migrate()
    run_started = datetime.now(UTC)
    with ledger_db.connection() as conn:
        rejected = dict(
            conn.execute(query("rejects/by_partition"), (s.source.source_id, s.keys)).fetchall()
        )

    # Plans load their entries only when their partition is posted: a run's memory follows one
    # partition (times PARALLEL_WORKERS), not the whole range.
    def plans_for(unit: list[str]) -> tuple[list[PartitionPlan], pd.DataFrame | None]:
        frames, whole = _validated_entries(s.store, s.source.source_key, unit)
        plans = [
            PartitionPlan(
                source_id=s.source.source_id,
                source_type=s.source.source_type,
                partition_key=key,
                run_id=s.run_id,
                entries=frame,
                rejected=int(rejected.get(key, 0)),
            )
            for key, frame in zip(unit, frames, strict=True)
        ]
        return plans, whole

    rows = {k: s.store.row_count(s.source.source_key, "validated", k) for k in s.keys}
    guard = _reject_guard(context, posting)
    held = guard.held(rows, rejected)
    if held:
        context.log.error(f"reject guard holds {len(held)} partition(s); the others are posted")
    to_post = [k for k in s.keys if k not in {h.partition_key for h in held}]
    progress = _Progress(context, sum(rows[k] for k in to_post))
    probe = pause_requested(run_started, s.source.source_id)
    stop = threading.Event()  # set on Terminate: every partition stops after its current batch
    # One verifier for the run: each account is summed in full once, then checked from there
    # (ledger/balance_check.py). Connections are reused from partition to partition.
    verifier = BalanceVerifier()
    collector = _Collector()

    load = _begin_load(ledger_db, s.source.source_id, s.run_id, posting.load_mode)
    try:
        context.log.info(f"load mode: {load.mode} ({load.reason})")
        options = load.posting_options(posting.options())
        sessions = PostingSessions(ledger_db.connect, live=not load.initial)
        run = PostingRun(ledger_db.connect, options, sessions, verifier, probe, progress, stop)

        def post(unit: list[str]) -> list[PostingOutcome]:
            plans, whole = plans_for(unit)
            outcomes = post_partitions(run, plans, whole)
            for outcome in outcomes:
                if outcome.skipped:
                    progress.skip(outcome.to_process)
            collector.after(sum(o.to_process for o in outcomes))
            return outcomes

        with sessions:
            units = posting_units(to_post, rows, options.batch_size)
            outcomes = _post_all(units, post, posting.parallel_workers, stop)
    finally:
        # Whatever happened, an initial load builds its indexes before the step ends (a killed
        # process leaves that to the next run: ledger/load_mode.py).
        load.finish()
    if load.initial:
        drift = load.drift or []
        built = (
            f"run {load.joined_run} builds the indexes"
            if load.joined_run
            else f"{len(load.dropped)} index(es) built in {load.rebuild_seconds or 0:.1f} s"
        )
        context.log.info(
            f"initial load: {built}; every balance checked against its entries: {len(drift)} differ"
        )
        if drift:
            error = BalanceDriftError(f"{s.keys[0]}..{s.keys[-1]} (initial load)", drift)
            raise dg.Failure(description=str(error), allow_retries=False)
    else:
        context.log.info(
            f"balance checks: {verifier.full_checks} account(s) summed in full, "
            f"{verifier.incremental_checks} checked incrementally"
        )
    metadata = {**_metadata(outcomes), **load.metadata(), **_guard_metadata(guard, held)}
    if held:
        _fail_held(context, ledger_db, s.source.source_id, guard, held, outcomes, metadata)
    # Each partition's materialization carries its own numbers (same keys as the run's totals,
    # which they override), so the UI's plots show them across partitions, not the run's sums.
    add_partition_metadata(context, {o.partition_key: partition_metadata(o) for o in outcomes})
    return dg.MaterializeResult(metadata=metadata)


def _record_materializations(
    context: dg.AssetExecutionContext, materializations: list[dg.AssetMaterialization]
) -> None:
    """Store these materializations now, in a step about to fail: `context.log_event` would
    hold them until the step returns, and a failing step never does. Written as the step's own
    events (Dagster's `DagsterEvent.asset_materialization`); should its internals not be where
    they were (another minor version), the run only fails without them."""
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    if step is None:
        context.log.warning("posted partitions not recorded as materialized (Dagster internals)")
        return
    for materialization in materializations:
        DagsterEvent.asset_materialization(step, materialization)


def _reject_guard(context: dg.AssetExecutionContext, posting: PostingSettings) -> RejectGuard:
    try:
        return posting.reject_guard(dict(context.run.tags))
    except SettingsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _guard_metadata(guard: RejectGuard, held: list[HeldPartition]) -> dict[str, dg.MetadataValue]:
    """The guard this run applied (and an override's reason), and what it held."""
    return {
        "reject_guard": dg.MetadataValue.text(guard.describe()),
        "partitions_held_by_reject_guard": dg.MetadataValue.int(len(held)),
    }


def _fail_held(
    context: dg.AssetExecutionContext,
    ledger_db: LedgerDatabase,
    source_id: str,
    guard: RejectGuard,
    held: list[HeldPartition],
    outcomes: list[PostingOutcome],
    metadata: dict[str, dg.MetadataValue],
) -> None:
    """The partitions posted are recorded as materialized, each with its numbers; then the step
    fails naming the held ones, so the run is red and the held days show failed in the UI."""
    _record_materializations(
        context,
        [
            dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=outcome.partition_key,
                metadata=partition_metadata(outcome),
            )
            for outcome in outcomes
        ],
    )
    with ledger_db.connection() as conn:
        reasons = top_reasons(conn, source_id, [h.partition_key for h in held])
    message = redact(held_message(guard, held, reasons))
    context.log.error(message)
    raise dg.Failure(description=message, metadata=metadata, allow_retries=False)


def _begin_load(ledger_db: LedgerDatabase, source_id: str, run_id: str, requested: str) -> Load:
    """The run's LOAD_MODE decided (ledger/load_mode.py); a refusal fails the step at once."""
    try:
        return load_mode.begin(ledger_db.connect, source_id, run_id, requested)
    except LoadModeRefused as exc:
        raise dg.Failure(description=redact(str(exc)), allow_retries=False) from exc


def _validated_entries(
    store: StageStore, source_key: str, keys: list[str]
) -> tuple[list[pd.DataFrame], pd.DataFrame | None]:
    """Partitions' validated entries with Arrow-backed text: read faster and held in a fraction
    of the memory of Python strings, which is what the largest day of a big source needs
    (docs/performance.md, 'Why the code is shaped this way'). Several small partitions of one
    schema are converted to pandas in one call and cut per partition (a conversion costs about a
    millisecond whatever its size): returns the partitions' frames and, when they were cut from
    one, that frame (posting then hashes and stages groups of them without concatenating). The
    plan digest hashes the same values either way."""
    tables = [store.read_table(source_key, "validated", key) for key in keys]
    if len(tables) > 1:
        try:
            whole = pa.concat_tables(tables).to_pandas(types_mapper=arrow_text)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # schemas differ (e.g. a column all empty in one partition): one by one
        else:
            frames, start = [], 0
            for table in tables:
                frames.append(whole.iloc[start : start + table.num_rows].reset_index(drop=True))
                start += table.num_rows
            return frames, whole
    return [table.to_pandas(types_mapper=arrow_text) for table in tables], None


class _Collector:
    """A full garbage collection after every ~200,000 rows posted.

    pandas and pyarrow objects form reference cycles that only a generation-2 collection frees,
    and Python runs those less often as the heap grows, so without it posting's RSS climbs
    with the entries posted instead of staying flat (docs/performance.md, 'Why the code is
    shaped this way'). Collecting by rows rather than by partition keeps 1,096 small partitions
    from paying it 1,096 times."""

    EVERY_ROWS = 200_000

    def __init__(self) -> None:
        self.rows = 0
        self.lock = threading.Lock()

    def after(self, rows: int) -> None:
        with self.lock:
            self.rows += rows
            due = self.rows >= self.EVERY_ROWS
            if due:
                self.rows = 0
        if due:
            gc.collect()


def partition_metadata(o: PostingOutcome) -> dict[str, dg.MetadataValue]:
    """One partition's posting numbers: counts, rate, batch and checkpoint times."""
    batches = o.batches
    rows = sum(b.rows for b in batches)
    return {
        "dagster/row_count": dg.MetadataValue.int(o.posted + o.already_posted),
        "status": dg.MetadataValue.text(o.status),
        "skipped_completed": dg.MetadataValue.bool(o.skipped),
        "processed": dg.MetadataValue.int(rows),
        "posted": dg.MetadataValue.int(o.posted),
        "already_posted": dg.MetadataValue.int(o.already_posted),
        "failed": dg.MetadataValue.int(o.conflicts),
        "duplicates": dg.MetadataValue.int(o.duplicates),
        "conflicts": dg.MetadataValue.int(o.conflicts),
        "rejected": dg.MetadataValue.int(o.rejected),
        "batches": dg.MetadataValue.int(len(batches)),
        "seconds": dg.MetadataValue.float(round(o.seconds, 3)),
        "entries_per_second": dg.MetadataValue.float(round(o.entries_per_second, 1)),
        "mean_batch_ms": dg.MetadataValue.float(
            round(1000 * sum(b.seconds for b in batches) / len(batches), 2) if batches else 0.0
        ),
        "max_batch_ms": dg.MetadataValue.float(
            round(1000 * max(b.seconds for b in batches), 2) if batches else 0.0
        ),
        "mean_checkpoint_ms": dg.MetadataValue.float(
            round(1000 * sum(b.checkpoint_seconds for b in batches) / len(batches), 3)
            if batches
            else 0.0
        ),
        "transient_retries": dg.MetadataValue.int(o.retries),
        "posted_in_group_of": dg.MetadataValue.int(o.group_size),
    }


def posting_units(keys: list[str], rows: dict[str, int], batch_size: int) -> list[list[str]]:
    """Consecutive partitions whose entries fit in one batch, together (at most
    GROUP_MAX_PARTITIONS of them): each unit is posted in order, small partitions in one group
    (ledger/group_posting.py), so a long daily history does not pay a partition's fixed cost per
    day. A partition bigger than a batch is a unit of its own."""
    units: list[list[str]] = []
    unit: list[str] = []
    total = 0
    for key in keys:
        if unit and (total + rows[key] > batch_size or len(unit) >= GROUP_MAX_PARTITIONS):
            units.append(unit)
            unit, total = [], 0
        unit.append(key)
        total += rows[key]
    if unit:
        units.append(unit)
    return units


def _post_all(
    units: list[list[str]],
    post: Callable[[list[str]], list[PostingOutcome]],
    workers: int,
    stop: threading.Event | None = None,
) -> list[PostingOutcome]:
    try:
        if workers <= 1:
            try:
                return [outcome for unit in units for outcome in post(unit)]
            except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as exc:
                # Between partitions; inside one, the poster turns it into PausedError itself.
                raise PausedError("interrupted (run terminated); re-run to resume") from exc
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="post") as pool:
            futures = [pool.submit(post, unit) for unit in units]
            try:
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException as exc:  # Terminate / Ctrl-C land in this thread, not a worker's
                if stop is not None:
                    stop.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                raise PausedError(
                    "interrupted (run terminated): partitions in flight stopped after their "
                    "current batch; re-run to resume"
                ) from exc
            for future in pending:
                future.cancel()
            return [o for f in futures if not f.cancelled() for o in f.result()]
    except PausedError as exc:
        raise dg.Failure(description=f"PAUSED: {exc}", allow_retries=False) from exc
    except PostingError as exc:
        raise dg.Failure(description=redact(str(exc)), allow_retries=False) from exc
    except psycopg.Error as exc:
        # Transient errors already retried MAX_RETRIES times per batch; the step's RetryPolicy
        # tries once more from the checkpoint. The message is redacted: it may name the server.
        raise dg.Failure(
            description=f"database error: {redact(str(exc))}", allow_retries=True
        ) from exc


def _metadata(outcomes: list[PostingOutcome]) -> dict[str, dg.MetadataValue]:
    total_rows = sum(sum(b.rows for b in o.batches) for o in outcomes)
    seconds = sum(o.seconds for o in outcomes)
    batches = [b for o in outcomes for b in o.batches]
    return {
        "dagster/row_count": dg.MetadataValue.int(
            sum(o.posted + o.already_posted for o in outcomes)
        ),
        "posted": dg.MetadataValue.int(sum(o.posted for o in outcomes)),
        "already_posted": dg.MetadataValue.int(sum(o.already_posted for o in outcomes)),
        "duplicates": dg.MetadataValue.int(sum(o.duplicates for o in outcomes)),
        "conflicts": dg.MetadataValue.int(sum(o.conflicts for o in outcomes)),
        "rejected": dg.MetadataValue.int(sum(o.rejected for o in outcomes)),
        "partitions_skipped_completed": dg.MetadataValue.int(sum(o.skipped for o in outcomes)),
        "batches": dg.MetadataValue.int(len(batches)),
        "entries_per_second": dg.MetadataValue.float(
            round(total_rows / seconds, 1) if seconds else 0.0
        ),
        "mean_batch_ms": dg.MetadataValue.float(
            round(1000 * sum(b.seconds for b in batches) / len(batches), 2) if batches else 0.0
        ),
        "mean_checkpoint_ms": dg.MetadataValue.float(
            round(1000 * sum(b.checkpoint_seconds for b in batches) / len(batches), 3)
            if batches
            else 0.0
        ),
        "transient_retries": dg.MetadataValue.int(sum(o.retries for o in outcomes)),
        **partition_table(
            [o.partition_key for o in outcomes],
            "by_partition",
            [
                {
                    "partition": o.partition_key,
                    "status": o.status,
                    "skipped": o.skipped,
                    "resumed_after_row": o.resumed_after,
                    "posted": o.posted,
                    "already_posted": o.already_posted,
                    "duplicates": o.duplicates,
                    "conflicts": o.conflicts,
                    "rejected": o.rejected,
                    "seconds": round(o.seconds, 3),
                }
                for o in outcomes[:500]
            ],
            [
                "partition",
                "status",
                "skipped",
                "resumed_after_row",
                "posted",
                "already_posted",
                "duplicates",
                "conflicts",
                "rejected",
                "seconds",
            ],
        ),
    }
