"""The rule that decides a run's process is gone (stale_runs.ProcessIdentity), on real processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from ledger_backfill_dagster.defs.execution.stale_runs import ProcessIdentity


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def _identity_of(process: subprocess.Popen) -> ProcessIdentity:
    import psutil

    here = ProcessIdentity.current()
    return dataclasses.replace(
        here, pid=process.pid, started=psutil.Process(process.pid).create_time()
    )


def test_tags_round_trip_and_a_run_without_them_is_not_judged() -> None:
    me = ProcessIdentity.current()
    assert ProcessIdentity.from_tags(me.as_tags()) == dataclasses.replace(
        me, started=round(me.started, 3)
    )
    assert ProcessIdentity.from_tags({}) is None
    assert ProcessIdentity.from_tags({**me.as_tags(), "ledger_backfill/process_pid": "x"}) is None


def test_a_live_process_is_alive_a_killed_one_is_gone() -> None:
    child = _child()
    identity = _identity_of(child)
    try:
        assert identity.is_alive()
        child.kill()
        # Waited for without being reaped: a zombie, whose run is as dead as a reaped one's.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not identity.is_alive()
    finally:
        child.kill()
        child.wait()
    assert not identity.is_alive()


def test_a_reused_pid_does_not_keep_a_dead_run_alive() -> None:
    child = _child()
    try:
        reused = dataclasses.replace(_identity_of(child), started=_identity_of(child).started - 60)
        assert not reused.is_alive()
    finally:
        child.kill()
        child.wait()


def test_a_run_on_another_host_or_container_is_never_this_machines() -> None:
    me = ProcessIdentity.current()
    assert me.same_machine(ProcessIdentity.current())
    assert not me.same_machine(dataclasses.replace(me, host=me.host + "-other"))
    assert not me.same_machine(dataclasses.replace(me, machine=me.machine + "-other-pid-ns"))
