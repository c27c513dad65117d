"""5. Resume after a crash: a posting process killed with SIGKILL mid-partition, then resumed; what
the resume redid and what the crash lost.

The posting process is this module run as `python -m benchmarks.resume PARQUET KEY BATCH_SIZE`,
with the database's URL in its environment (not on its command line, where `ps` shows it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg

from benchmarks.common import (
    REPO,
    Dataset,
    Server,
    check_text,
    ledger_check,
    prepare_ledger,
    say,
)
from ledger_backfill_dagster.ledger.posting import PartitionPlan, PostingOptions, post_partition

CHILD_URL_VARIABLE = "LBBENCH_POST_CHILD_URL"


def plan_for(key: str, frame: pd.DataFrame, run_id: str) -> PartitionPlan:
    return PartitionPlan(
        source_id="benchmark",
        source_type="CSV",
        partition_key=key,
        run_id=run_id,
        entries=frame,
    )


def post_child(url: str, parquet: str, key: str, batch_size: int) -> None:
    """Runs in a subprocess: post one partition; the parent kills it mid-way."""
    plan = plan_for(key, pd.read_parquet(parquet), "crashing-run")
    post_partition(lambda: psycopg.connect(url), plan, PostingOptions(batch_size=batch_size))


def start_child(url: str, parquet: Path, key: str, batch_size: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.resume", str(parquet), key, str(batch_size)],
        cwd=REPO,
        env={**os.environ, CHILD_URL_VARIABLE: url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_resume(
    server: Server, data: Dataset, frames: list[tuple[str, Path]], batch_size: int
) -> dict[str, Any]:
    key, path = max(frames, key=lambda kp: kp[1].stat().st_size)
    frame = pd.read_parquet(path)
    kill_after = max(3, min(20, len(frame) // batch_size // 2))
    with server.database("resume") as url:
        prepare_ledger(url, data.accounts_file)
        child = start_child(url, path, key, batch_size)
        committed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.time() + 300
            while time.time() < deadline and child.poll() is None:
                row = conn.execute(
                    "SELECT batches_committed FROM ledger_backfill_checkpoints"
                    " WHERE partition_key = %s",
                    (key,),
                ).fetchone()
                committed = row[0] if row else 0
                if committed >= kill_after:
                    break
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
            child.wait()
            time.sleep(0.5)  # the server notices the dead connection and rolls back
            status, done_rows, done_batches = conn.execute(
                "SELECT status, total_processed, batches_committed FROM ledger_backfill_checkpoints"
                " WHERE partition_key = %s",
                (key,),
            ).fetchone()
            in_ledger = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
        plan = plan_for(key, frame, "resumed-run")
        t0 = time.perf_counter()
        outcome = post_partition(
            lambda: psycopg.connect(url), plan, PostingOptions(batch_size=batch_size)
        )
        seconds = time.perf_counter() - t0
        check = ledger_check(url)
    resumed_rows = sum(b.rows for b in outcome.batches)
    # Work the crash cost: rows processed again beyond what had not been committed (0 when the
    # checkpoint and the ledger agree), plus the in-flight batch that was rolled back.
    redone_committed = resumed_rows - (len(frame) - done_rows)
    result = {
        "partition": key,
        "rows": len(frame),
        "batch_size": batch_size,
        "checkpoint_status_after_kill": status,
        "batches_committed_at_kill": done_batches,
        "rows_committed_at_kill": done_rows,
        "ledger_rows_at_kill": in_ledger,
        "resumed_after_row": outcome.resumed_after,
        "resume_rows": resumed_rows,
        "resume_batches": len(outcome.batches),
        "committed_rows_redone": redone_committed,
        "lost_in_flight_bound_rows": batch_size,
        "resume_seconds": seconds,
        "check": check,
        "ok": in_ledger == done_rows
        and redone_committed == 0
        and check["ok"]
        and check["entries"] == len(frame),
    }
    say(
        f"  partition {key} ({len(frame):,} rows, BATCH_SIZE={batch_size}): killed (SIGKILL) with "
        f"{done_batches} batches = {done_rows:,} rows committed; ledger held {in_ledger:,} rows "
        f"(checkpoint {status})"
    )
    say(
        f"  resume posted the remaining {resumed_rows:,} rows in {len(outcome.batches)} batches "
        f"({seconds:.2f} s); committed rows redone: {redone_committed}; work lost to the crash: "
        f"at most the one in-flight batch (≤ {batch_size} rows)  [{check_text(check)}]"
    )
    return result


if __name__ == "__main__":
    parquet_file, partition_key, size = sys.argv[1:4]
    post_child(os.environ[CHILD_URL_VARIABLE], parquet_file, partition_key, int(size))
