"""Runs whose process is gone: recognise them and free the pool slots they still hold.

Dagster keeps a hard-killed run (SIGKILL, OOM) STARTED for good, and with it the `ledger_pg`
slot its posting step claimed: after four such kills every new run waits for a slot forever.
Nothing frees them by itself unless a daemon runs run monitoring, which `dagster asset
materialize` does not. So each run, when it starts and again while it waits for a slot, ends
the runs that are provably dead and frees their slots (`free_slots_of_dead_runs`).

"Provably dead" is decided from the process identity each run records in its own tags when its
executor starts (`record_process`): host name, machine (boot id and pid namespace), pid and the
process's start time. A run is dead when it ran on this very machine and no process with that pid
and start time exists any more (a zombie counts as dead; a pid reused by another program does
not keep it alive). A run on another machine, or one without these tags, is never touched here:
its process cannot be checked from this one. For those, an operator frees the slot (UI: run →
Terminate, force; then Free concurrency slots) or the daemon does (run_monitoring).

A dead run that has not finished is marked failed (canceled if a termination was pending), with
auto-retry off for it: the run that found it is the one carrying the work on, and its partitions
resume from their checkpoints. A finished run whose process is gone only has its slots freed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil

TAG_PREFIX = "ledger_backfill/process_"
HOST_TAG = f"{TAG_PREFIX}host"
MACHINE_TAG = f"{TAG_PREFIX}machine"
PID_TAG = f"{TAG_PREFIX}pid"
STARTED_TAG = f"{TAG_PREFIX}started"
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's own: false = the retry daemon leaves it alone
# psutil derives a start time from the boot time and the process's start tick: the same process
# always gives the same value; a different process on a reused pid differs by far more.
START_TIME_TOLERANCE_SECONDS = 1.0
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot-{int(psutil.boot_time())}"


def _pid_namespace() -> str:
    """Processes in different containers may share a host name and a kernel but not a pid space."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    machine: str  # boot id and pid namespace: a pid means something only within both
    pid: int
    started: float  # the process's start time, which tells a reused pid apart

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(
            host=socket.gethostname(),
            machine=f"{_boot_id()}/{_pid_namespace()}",
            pid=os.getpid(),
            started=psutil.Process().create_time(),
        )

    def as_tags(self) -> dict[str, str]:
        return {
            HOST_TAG: self.host,
            MACHINE_TAG: self.machine,
            PID_TAG: str(self.pid),
            STARTED_TAG: f"{self.started:.3f}",
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessIdentity | None:
        try:
            return cls(
                host=tags[HOST_TAG],
                machine=tags[MACHINE_TAG],
                pid=int(tags[PID_TAG]),
                started=float(tags[STARTED_TAG]),
            )
        except (KeyError, ValueError):
            return None

    def same_machine(self, other: ProcessIdentity) -> bool:
        return (self.host, self.machine) == (other.host, other.machine)

    def is_alive(self) -> bool:
        """Whether this process still runs (call only on the machine it ran on)."""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(process.create_time() - self.started) <= START_TIME_TOLERANCE_SECONDS
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True  # it exists, under another user: not ours to judge dead


def record_process(instance: dg.DagsterInstance, run_id: str) -> ProcessIdentity:
    """Tag the run with the process that executes it (and will claim its pool slots)."""
    me = ProcessIdentity.current()
    instance.add_run_tags(run_id, me.as_tags())
    return me


@dataclass(frozen=True)
class FreedRun:
    run_id: str
    status: str  # the run's status when it was found
    process: ProcessIdentity

    def describe(self) -> str:
        ended = ", run marked failed" if self.status in {s.value for s in UNFINISHED} else ""
        return (
            f"run {self.run_id} ({self.status}): its process {self.process.pid} on "
            f"{self.process.host} is gone; its pool slots freed{ended}"
        )


def _slot_holders(instance: dg.DagsterInstance) -> set[str]:
    """Runs holding a pool slot or waiting in a pool's queue (a dead waiter could be handed a
    slot it will never use)."""
    storage = instance.event_log_storage
    holders = set(storage.get_concurrency_run_ids())
    for pool in storage.get_concurrency_keys():
        holders |= {slot.run_id for slot in storage.get_concurrency_info(pool).claimed_slots}
    return holders


def _candidates(instance: dg.DagsterInstance, own_run_id: str | None) -> list[dg.DagsterRun]:
    """Runs not finished, and finished runs still holding or queued for a slot."""
    runs = {
        r.dagster_run.run_id: r.dagster_run
        for r in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED))
    }
    if instance.event_log_storage.supports_global_concurrency_limits:
        holders = _slot_holders(instance) - set(runs)
        if holders:
            records = instance.get_run_records(dg.RunsFilter(run_ids=sorted(holders)))
            runs.update({r.dagster_run.run_id: r.dagster_run for r in records})
    runs.pop(own_run_id or "", None)
    return list(runs.values())


def free_slots_of_dead_runs(
    instance: dg.DagsterInstance,
    own_run_id: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[FreedRun]:
    """End every unfinished run whose process is provably gone, and free the pool slots (and
    queued claims) of every such run, finished or not."""
    here = ProcessIdentity.current()
    freed = []
    for run in _candidates(instance, own_run_id):
        process = ProcessIdentity.from_tags(dict(run.tags))
        if process is None or not process.same_machine(here) or process.is_alive():
            continue
        found = FreedRun(run.run_id, run.status.value, process)
        _end_run(instance, run, process)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        freed.append(found)
        if log is not None:
            log(found.describe())
    return freed


def _end_run(instance: dg.DagsterInstance, run: dg.DagsterRun, process: ProcessIdentity) -> None:
    # Read again: another starting run may have ended it a moment ago.
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status not in UNFINISHED:
        return
    instance.add_run_tags(run.run_id, {WILL_RETRY_TAG: "false"})
    message = (
        f"The run's process ({process.pid} on {process.host}) is gone (killed or crashed); "
        "marked ended and its pool slots freed by a later run. Its partitions resume from their "
        "checkpoints when the range is run again."
    )
    if current.status == dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceled(current, message)
    else:
        instance.report_run_failed(current, message)
