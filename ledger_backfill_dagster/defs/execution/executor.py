"""The runs' executor: Dagster's in-process executor, with a wait for a pool slot that ends.

The posting step claims a slot in the `ledger_pg` pool. While no slot is free, Dagster's
in-process executor (1.13) loops in `inner_plan_execution_iterator`, and that loop:

- never sleeps: `InstanceConcurrencyContext.interval_to_next_pending_claim_check` returns
  min(0, …), so between two claim checks it spins a core;
- never looks at the interrupt Dagster captured: SIGTERM, Ctrl-C and the UI's Terminate only
  raise inside a step's code, and a waiting step has none running, so the run cannot be stopped;
- waits for slots that runs killed outright (SIGKILL, OOM) will never give back.

`ledger_in_process_executor` is the same executor with a concurrency context that sleeps between
checks (at most `WAIT_TICK_SECONDS` at a time), ends the run when it is interrupted or a pause is
requested (`ledger-backfill pause`) while it waits, and frees the slots of runs whose process is
gone (`stale_runs`), when the run starts and every `REAP_INTERVAL_SECONDS` while it waits. A run
stopped while waiting has not started its posting step, so no checkpoint changes: re-running the
range resumes as after any pause.

It also survives the pool's first use on a fresh instance: two runs that find no limit row for
the pool both insert the default one, and in dagster-postgres the loser's transaction fails on
`concurrency_limits_concurrency_key_key`. The claim is simply tried again; the row now exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import dagster as dg
import psycopg
from dagster._core.definitions.executor_definition import (
    IN_PROC_CONFIG,
    _core_in_process_executor_creation,
)
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.executor.in_process import InProcessExecutor
from dagster._core.executor.init import InitExecutorContext
from dagster._utils.interrupts import pop_captured_interrupt
from dagster_shared.utils.timing import format_duration
from sqlalchemy.exc import DBAPIError

from ledger_backfill_dagster.defs.execution.stale_runs import (
    free_slots_of_dead_runs,
    record_process,
)
from ledger_backfill_dagster.ledger.posting import pause_requested
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings

# How long the waiting loop sleeps at most: how late it may notice SIGTERM or Ctrl-C.
WAIT_TICK_SECONDS = 0.5
REAP_INTERVAL_SECONDS = 5.0
PAUSE_CHECK_INTERVAL_SECONDS = 2.0
POOL_CREATION_ATTEMPTS = 3
# Not the posting sessions' application_name: fault tests and operators count those.
PROBE_APPLICATION_NAME = "ledger_backfill_dagster slot wait"


class StoppedWhileWaiting(DagsterExecutionInterruptedError):
    """The run was interrupted, or a pause requested, while a step waited for a pool slot."""


def _pool_creation_race(exc: DBAPIError) -> bool:
    """The insert of a pool's default limit lost to another run's (dagster-postgres then runs
    its fallback UPDATE in the aborted transaction, so the error may be that one)."""
    text = f"{exc} {exc.__context__ or ''}"
    return "concurrency_limits" in text


class PauseProbe:
    """Whether `ledger-backfill pause` asked this run's source to stop after the run started."""

    def __init__(self, ledger_db: LedgerDatabase, source_id: str, run_started: datetime) -> None:
        self.ledger_db = ledger_db
        self.probe = pause_requested(run_started, source_id)

    @classmethod
    def for_run(cls, job_context: PlanExecutionContext, run_started: datetime) -> PauseProbe | None:
        """The probe for a run of this code location's assets; None for a job without them."""
        resources = job_context.scoped_resources_builder.resource_instance_dict
        source, ledger_db = resources.get("source"), resources.get("ledger_db")
        if not isinstance(source, SourceSettings) or not isinstance(ledger_db, LedgerDatabase):
            return None
        try:
            source_id = source.reader().source_id
        except Exception as exc:  # the posting step itself reports a source it cannot use
            job_context.log.debug(f"no pause check while waiting: {redact(str(exc))}")
            return None
        return cls(ledger_db, source_id, run_started)

    def __call__(self) -> bool:
        try:
            with psycopg.connect(
                self.ledger_db.url(),
                autocommit=True,
                connect_timeout=5,
                application_name=PROBE_APPLICATION_NAME,
            ) as conn:
                conn.execute("SET lock_timeout = '2s'")
                return self.probe(conn)
        except psycopg.Error:
            return False  # asked again at the next check; the wait goes on meanwhile


class WaitingConcurrencyContext(InstanceConcurrencyContext):
    """Dagster's per-run pool claims, with a wait that sleeps, can be stopped, and frees the
    slots of dead runs."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        dagster_run: dg.DagsterRun,
        log: Callable[[str], None],
        pause_probe: Callable[[], PauseProbe | None],
    ) -> None:
        super().__init__(instance, dagster_run)
        self._log = log
        self._pause_probe_factory = pause_probe
        self._pause_probe: PauseProbe | None = None
        self._probe_built = False
        self._next_reap = time.monotonic() + REAP_INTERVAL_SECONDS
        self._next_pause_check = time.monotonic()

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        waiting = step_key in self._pending_claims
        if waiting and pop_captured_interrupt():
            raise StoppedWhileWaiting(
                f"interrupted while {step_key} waited for a slot in pool {concurrency_key}; "
                "the step did not start. Re-run the range to resume."
            )
        claimed = self._claim(concurrency_key, step_key, step_priority)
        if not claimed:
            self._while_blocked(concurrency_key, step_key)
        return claimed

    def _claim(self, concurrency_key: str, step_key: str, step_priority: int) -> bool:
        for attempt in range(1, POOL_CREATION_ATTEMPTS + 1):
            try:
                return super().claim(concurrency_key, step_key, step_priority)
            except DBAPIError as exc:
                if attempt == POOL_CREATION_ATTEMPTS or not _pool_creation_race(exc):
                    raise
                self._pools = None  # read the limit row the other run created
                self._pending_timeouts[step_key] = 0.0
        raise AssertionError("unreachable")

    def _while_blocked(self, concurrency_key: str, step_key: str) -> None:
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + REAP_INTERVAL_SECONDS
            if free_slots_of_dead_runs(self._instance, self._run_id, self._log):
                # Freed slots go to the queued claims at once: check again now, not in 15 s.
                for pending in self._pending_claims:
                    self._pending_timeouts[pending] = 0.0
        if now >= self._next_pause_check:
            self._next_pause_check = now + PAUSE_CHECK_INTERVAL_SECONDS
            probe = self._probe()
            if probe is not None and probe():
                raise StoppedWhileWaiting(
                    f"PAUSED: a pause was requested while {step_key} waited for a slot in pool "
                    f"{concurrency_key}; the step did not start. Clear it (ledger-backfill "
                    "resume) and re-run the range to resume."
                )

    def _probe(self) -> PauseProbe | None:
        if not self._probe_built:
            self._pause_probe = self._pause_probe_factory()
            self._probe_built = True
        return self._pause_probe

    def interval_to_next_pending_claim_check(self) -> float:
        # Dagster's returns min(0, …) ≤ 0, and the executor then never sleeps between checks.
        if not self._pending_claims:
            return 0.0
        now = time.time()
        next_check = min((at - now for at in self._pending_timeouts.values()), default=0.0)
        return min(max(next_check, 0.0), WAIT_TICK_SECONDS)


def _execution_iterator(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    instance_concurrency_context: InstanceConcurrencyContext | None = None,
) -> Iterator[DagsterEvent]:
    """`dagster._core.executor.in_process.inprocess_execution_iterator`, with our context."""
    run_started = datetime.now(UTC)
    with WaitingConcurrencyContext(
        job_context.instance,
        job_context.dagster_run,
        log=job_context.log.warning,
        pause_probe=lambda: PauseProbe.for_run(job_context, run_started),
    ) as context:
        yield from inner_plan_execution_iterator(job_context, execution_plan, context)


class LedgerInProcessExecutor(InProcessExecutor):
    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        # Same steps as InProcessExecutor.execute, with our iterator; first, the process is
        # recorded on the run (so a later run can tell whether it died) and dead runs' slots
        # are freed.
        instance, run_id = plan_context.instance, plan_context.run_id
        record_process(instance, run_id)
        for freed in free_slots_of_dead_runs(instance, run_id):
            yield DagsterEvent.engine_event(plan_context, freed.describe(), EngineEventData())

        pid = os.getpid()
        step_keys = execution_plan.step_keys_to_execute
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in process (pid: {pid})",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )
        started = time.perf_counter()
        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=_execution_iterator,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
                step_dependency_config=self.step_dependency_config,
            ),
        )
        elapsed = format_duration((time.perf_counter() - started) * 1000)
        yield DagsterEvent.engine_event(
            plan_context,
            f"Finished steps in process (pid: {pid}) in {elapsed}",
            event_specific_data=EngineEventData.in_process(pid, step_keys),
        )


@dg.executor(name="ledger_in_process", config_schema=IN_PROC_CONFIG)
def ledger_in_process_executor(init_context: InitExecutorContext) -> LedgerInProcessExecutor:
    """Dagster's in_process executor whose wait for a pool slot sleeps, obeys SIGTERM, Ctrl-C,
    Terminate and `ledger-backfill pause`, and frees the slots of runs whose process is gone."""
    core = _core_in_process_executor_creation(init_context.executor_config)
    return LedgerInProcessExecutor(
        retries=core.retries,
        step_dependency_config=core.step_dependency_config,
        marker_to_close=core.marker_to_close,
    )
