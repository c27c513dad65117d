"""4. End to end through Dagster: `dagster asset materialize --select '*' --partition-range ...`
on a fresh database, with its own DAGSTER_HOME and LEDGER_BACKFILL_HOME. The same run, limited to
the first three assets, prepares the posting stage's input."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    Dataset,
    Server,
    check_text,
    fmt_bytes,
    fmt_rate,
    ledger_check,
    rate,
    say,
)
from benchmarks.dagster_run import Run, dagster_command, run_dagster

PREPARING_SELECTION = "extracted_source,transformed_entries,validated_entries"


def dagster_env(url: str, data: Dataset, home: Path, batch_size: int | None) -> dict[str, str]:
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(dagster_home),
        "LEDGER_BACKFILL_HOME": str(home / "state"),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_START_DATE": data.first,
    }
    if batch_size:
        env["BATCH_SIZE"] = str(batch_size)
    for stale in ("DAGSTER_PG_URL", "BACKFILL_SOURCE_ID", "BACKFILL_SOURCE_TYPE", "FORCE_REDO"):
        os.environ.pop(stale, None)
    return env


def migrate_instance(env: dict[str, str]) -> float:
    """Create Dagster's own tables before the timed run (a one-off cost, reported apart)."""
    t0 = time.perf_counter()
    subprocess.run(
        dagster_command("instance", "migrate"),
        cwd=REPO,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


@dataclass
class E2E:
    run: Run
    data: Dataset
    instance_setup: float
    check: dict[str, Any] | None
    home: Path

    def summary(self) -> dict[str, Any]:
        r = self.run
        return {
            "label": r.label,
            "entries": self.data.entries,
            "days": self.data.days,
            "ok": r.ok,
            "returncode": r.returncode,
            "wall_seconds": r.wall,
            "rate": rate(self.data.entries, r.wall) if r.ok else None,
            "peak_rss_bytes": r.peak_rss,
            "peak_rss_tree_bytes": r.peak_rss_tree,
            "peak_rss_tree_during": r.step_at(r.peak_rss_tree_at),
            "max_rss_process_bytes": r.max_rss_process,
            "killed_over_cap": r.killed_over_cap,
            "instance_setup_seconds": self.instance_setup,
            "profile": r.profile(),
            "steps_reported": r.steps,
            "check": self.check,
            "log": r.log_file,
        }


def bench_e2e(
    server: Server,
    data: Dataset,
    label: str,
    work: Path,
    batch_size: int | None,
    cap_bytes: int,
    select: str = "*",
    keep_home: bool = False,
) -> E2E:
    home = work / "runs" / label
    shutil.rmtree(home, ignore_errors=True)
    with server.database(label.replace("-", "_")) as url:
        env = dagster_env(url, data, home, batch_size)
        setup = migrate_instance(env)
        run = run_dagster(label, env, data.first, data.last, select, work / "logs", cap_bytes)
        check = ledger_check(url) if run.ok and select == "*" else None
    result = E2E(run, data, setup, check, home)
    print_e2e(result)
    if not keep_home:
        shutil.rmtree(home, ignore_errors=True)
    return result


def prepare_validated(server: Server, data: Dataset, work: Path, cap_bytes: int) -> E2E:
    """Extract, transform and validate only, keeping the run's home: its validated Parquet is the
    posting stage's input when no end-to-end run left one."""
    return bench_e2e(
        server, data, "prepare", work, None, cap_bytes, select=PREPARING_SELECTION, keep_home=True
    )


def validated_frames(home: Path) -> list[tuple[str, Path]]:
    """(partition key, file) of the validated Parquet a preparing run left in its home."""
    files = sorted((home / "state" / "stages").glob("*/validated/*.parquet"))
    return [(f.stem, f) for f in files]


def print_e2e(result: E2E) -> None:
    r = result.run
    d = result.data
    if r.killed_over_cap:
        say(f"  KILLED: process tree passed the RSS cap at {fmt_bytes(r.peak_rss_tree)}")
    elif r.returncode != 0:
        say(f"  FAILED (exit {r.returncode}); last lines of {r.log_file}:")
        for line in r.tail[-25:]:
            say("    " + line[:220])
        return
    say(
        f"  {d.entries:,} entries over {d.days} partitions: wall {r.wall:.1f} s from the command's"
        f" start = {fmt_rate(rate(d.entries, r.wall))}"
    )
    say(
        f"  peak RSS {fmt_bytes(r.peak_rss)}: kernel high-water mark {fmt_bytes(r.max_rss_process)}"
        f" (largest process); process tree polled every 20 ms {fmt_bytes(r.peak_rss_tree)}, "
        f"highest during {r.step_at(r.peak_rss_tree_at)}"
    )
    say(
        f"  (Dagster instance tables created beforehand in {result.instance_setup:.1f} s, not timed)"
    )
    if result.check:
        say(f"  ledger after the run: {check_text(result.check)}")
    say("  profile:")
    for name, seconds in r.profile():
        share = 100 * seconds / r.wall if r.wall else 0
        say(f"    {name:<66} {seconds:8.2f} s  {share:5.1f} %")
