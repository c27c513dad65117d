"""A Dagster command run as a measured subprocess: its wall time from the command's start, the
peak RSS of its process tree, and the time of each step event as its log lines arrive. The
end-to-end, preparing and memory runs all go through it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.common import REPO

DAGSTER = Path(sys.executable).parent / "dagster"
ASSETS = [
    "extracted_source",
    "transformed_entries",
    "validated_entries",
    "posted_batches",
    "reconciliation_report",
]

STEP_EVENT = re.compile(r" - (?P<step>\w+) - (?P<event>STEP_START|STEP_SUCCESS|STEP_FAILURE) - ")
STEP_DURATION = re.compile(
    r'Finished execution of step "(?P<step>\w+)" in (?P<duration>[0-9hms.]+)\.'
)
RUN_EVENT = re.compile(r" - (?P<event>RUN_START|RUN_SUCCESS|RUN_FAILURE) - ")


def parse_duration(text: str) -> float:
    """Dagster's format_duration ("8.3ms", "533ms", "5.6s", "4m52s", "1h4m") → seconds."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)([hms])", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


class TreeMemory(threading.Thread):
    """Polls the resident memory of a process and all its descendants; kills over the cap."""

    def __init__(self, pid: int, cap_bytes: int, t0: float, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cap = cap_bytes
        self.t0 = t0
        self.interval = interval
        self.peak = 0
        self.peak_at = 0.0
        self.killed = False
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                sizes = []
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        info = p.memory_info()
                        sizes.append((info.rss, info.rss - info.shared))
                # The biggest process in full; the others (a forked helper shares its parent's
                # pages until it execs) by their private pages only, so nothing counts twice.
                sizes.sort(reverse=True)
                total = sizes[0][0] + sum(private for _, private in sizes[1:]) if sizes else 0
            except psutil.NoSuchProcess:
                return
            if total > self.peak:
                self.peak, self.peak_at = total, time.perf_counter() - self.t0
            if self.cap and total > self.cap and not self.killed:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
            self.stop.wait(self.interval)


@dataclass
class Run:
    label: str
    command: list[str]
    returncode: int = 0
    wall: float = 0.0
    peak_rss_tree: int = 0
    peak_rss_tree_at: float = 0.0
    max_rss_process: int = 0
    killed_over_cap: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    steps_observed: dict[str, tuple[float, float]] = field(default_factory=dict)
    run_start: float | None = None
    run_end: float | None = None
    tail: list[str] = field(default_factory=list)
    log_file: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_over_cap

    @property
    def peak_rss(self) -> int:
        """The kernel's high-water mark of the largest process, or the polled tree if higher."""
        return max(self.peak_rss_tree, self.max_rss_process)

    def step_at(self, moment: float) -> str:
        for step, (start, end) in self.steps_observed.items():
            if start <= moment <= end:
                return step
        first = min((s for s, _ in self.steps_observed.values()), default=None)
        return "start-up" if first is None or moment < first else "between or after steps"

    def observe(self, line: str, now: float) -> None:
        """Record the step or run event a log line reports, at `now` seconds into the run."""
        if m := STEP_EVENT.search(line):
            step, event = m.group("step"), m.group("event")
            start, _ = self.steps_observed.get(step, (now, now))
            if event == "STEP_START":
                self.steps_observed[step] = (now, now)
            else:
                self.steps_observed[step] = (start, now)
            if d := STEP_DURATION.search(line):
                self.steps[d.group("step")] = parse_duration(d.group("duration"))
        elif m := RUN_EVENT.search(line):
            if m.group("event") == "RUN_START":
                self.run_start = now
            else:
                self.run_end = now

    def profile(self) -> list[tuple[str, float]]:
        """Where the wall time went: start-up, each step, and what is left around them."""
        rows: list[tuple[str, float]] = []
        first_step = min((s for s, _ in self.steps_observed.values()), default=None)
        last_step = max((e for _, e in self.steps_observed.values()), default=None)
        if first_step is None or last_step is None:
            return [("total (no step events seen)", self.wall)]
        startup = self.run_start if self.run_start is not None else first_step
        rows.append(("process start-up (imports, definitions, instance) to RUN_START", startup))
        rows.append(("run set-up (RUN_START to first STEP_START)", first_step - startup))
        others = sorted(set(self.steps_observed) - set(ASSETS), key=self.steps_observed.get)
        for step in [*ASSETS, *others]:
            name = step if step in ASSETS else f"{step} (other step)"
            if step in self.steps:
                rows.append((name, self.steps[step]))
            elif step in self.steps_observed:
                start, end = self.steps_observed[step]
                rows.append((name + " (observed)", end - start))
        between = (last_step - first_step) - sum(
            self.steps.get(a, 0.0) for a in self.steps_observed
        )
        rows.append(("between steps (events, materialization writes)", max(between, 0.0)))
        rows.append(("after the last step to process exit", self.wall - last_step))
        return rows


# A small process between the benchmark and the measured command. A child forked straight from
# the benchmark would inherit its large RSS high-water mark (Linux records the old address
# space's peak at exec), so the kernel's max RSS would report the benchmark, not the backfill.
MAXRSS_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def dagster_command(*args: str) -> list[str]:
    return [str(DAGSTER), *args]


def run_dagster(
    label: str,
    env: dict[str, str],
    first: str,
    last: str,
    select: str,
    log_dir: Path,
    cap_bytes: int,
) -> Run:
    """`dagster asset materialize` as a subprocess: wall time from the command's start, peak
    RSS (polled over the process tree, and the kernel's max RSS of the biggest process), and the
    time of each step event as the lines arrive."""
    command = dagster_command(
        "asset",
        "materialize",
        "-m",
        "ledger_backfill_dagster.definitions",
        "--select",
        select,
        "--partition-range",
        f"{first}...{last}",
    )
    run = Run(label, command)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}.log"
    run.log_file = str(log_path)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    maxrss_file = log_dir / f"{label}.maxrss"
    maxrss_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", MAXRSS_WRAPPER, str(maxrss_file), *command],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    monitor = TreeMemory(proc.pid, cap_bytes, t0)
    monitor.start()
    tail: list[str] = []
    with log_path.open("w") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            log.write(line)
            tail.append(line.rstrip("\n"))
            if len(tail) > 60:
                del tail[:-60]
            run.observe(line, now)
    _, status, _ = os.wait4(proc.pid, 0)
    run.wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    monitor.stop.set()
    monitor.join(timeout=2)
    run.returncode = proc.returncode
    run.peak_rss_tree = monitor.peak
    run.peak_rss_tree_at = monitor.peak_at
    with contextlib.suppress(OSError, ValueError):
        run.max_rss_process = int(maxrss_file.read_text()) * 1024  # Linux reports KiB
    run.killed_over_cap = monitor.killed
    run.tail = tail
    return run
