"""3. The posting stage alone: the pipeline's validated Parquet in, `post_partition` per partition
with one balance verifier and one set of reused sessions per run (as the posted_batches asset
does), for each BATCH_SIZE asked, without the balance check, with partitions in parallel, and as
an initial load (LOAD_MODE=initial, ledger/load_mode.py: its time includes the index build and
the balance validation after it), with one and with two workers."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow.parquet as pq

from benchmarks.common import (
    Dataset,
    Server,
    check_text,
    fmt_rate,
    ledger_check,
    prepare_ledger,
    rate,
    say,
)
from ledger_backfill_dagster.ledger import load_mode
from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
from ledger_backfill_dagster.ledger.posting import (
    PartitionPlan,
    PostingOptions,
    PostingOutcome,
    PostingSessions,
    post_partition,
)
from ledger_backfill_dagster.resources.stage_store import arrow_text

# (BATCH_SIZE, VALIDATE_BALANCES, PARALLEL_WORKERS, LOAD_MODE)
Variant = tuple[int, bool, int, str]
DEFAULT_BATCH_SIZE = PostingOptions().batch_size


def variants(batch_sizes: list[int], posting_workers: int) -> list[Variant]:
    """Each size with the balance check, the first without it, the largest and the default in
    parallel, and the default as an initial load, alone and in parallel."""
    found: list[Variant] = [(b, True, 1, "live") for b in batch_sizes]
    if found:
        found.append((found[0][0], False, 1, "live"))
        if posting_workers > 1:
            for size in dict.fromkeys([DEFAULT_BATCH_SIZE, max(batch_sizes)]):
                found.append((size, True, posting_workers, "live"))
        found.append((DEFAULT_BATCH_SIZE, True, 1, "initial"))
        if posting_workers > 1:
            found.append((DEFAULT_BATCH_SIZE, True, posting_workers, "initial"))
    return found


def variant_label(batch_size: int, validate_balances: bool, workers: int, mode: str) -> str:
    return (
        f"BATCH_SIZE={batch_size}"
        + ("" if validate_balances else ", VALIDATE_BALANCES=false")
        + (f", PARALLEL_WORKERS={workers}" if workers > 1 else "")
        + (", LOAD_MODE=initial" if mode == "initial" else "")
    )


def post_all(
    url: str,
    loaded: list[tuple[str, pd.DataFrame]],
    options: PostingOptions,
    workers: int,
    mode: str = "live",
) -> tuple[float, float | None]:
    """Post every partition as one run; returns the seconds spent inside batch transactions and,
    for an initial load, the seconds of its index build."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    verifier = BalanceVerifier()
    load = load_mode.begin(lambda: psycopg.connect(url), "benchmark", run_id, mode)
    if mode != load.mode:
        raise RuntimeError(f"LOAD_MODE={mode} asked, {load.mode} ran: {load.reason}")
    options = load.posting_options(options)
    try:
        inside = _post_partitions(url, loaded, options, workers, run_id, verifier, load.initial)
    finally:
        load.finish()
    if load.drift:
        raise RuntimeError(f"balances differ after the initial load: {load.drift[:5]}")
    return inside, load.rebuild_seconds


def _post_partitions(
    url: str,
    loaded: list[tuple[str, pd.DataFrame]],
    options: PostingOptions,
    workers: int,
    run_id: str,
    verifier: BalanceVerifier,
    initial: bool,
) -> float:
    with (
        PostingSessions(lambda: psycopg.connect(url), live=not initial) as sessions,
        ThreadPoolExecutor(workers) as pool,
    ):

        def post(item: tuple[str, pd.DataFrame]) -> PostingOutcome:
            key, frame = item
            plan = PartitionPlan(
                source_id="benchmark",
                source_type="CSV",
                partition_key=key,
                run_id=run_id,
                entries=frame,
            )
            return post_partition(
                lambda: psycopg.connect(url), plan, options, sessions=sessions, verifier=verifier
            )

        return sum(sum(b.seconds for b in outcome.batches) for outcome in pool.map(post, loaded))


def bench_posting(
    server: Server, data: Dataset, frames: list[tuple[str, Path]], wanted: list[Variant]
) -> list[dict[str, Any]]:
    loaded = [(key, pq.read_table(path).to_pandas(types_mapper=arrow_text)) for key, path in frames]
    total = sum(len(f) for _, f in loaded)
    say(
        f"  input: {total:,} validated entries in {len(loaded)} partitions (the pipeline's Parquet)"
    )
    results = []
    for batch_size, validate_balances, workers, mode in wanted:
        label = variant_label(batch_size, validate_balances, workers, mode)
        with server.database(f"post{batch_size}") as url:
            prepare_ledger(url, data.accounts_file)
            options = PostingOptions(batch_size=batch_size, validate_balances=validate_balances)
            t0 = time.perf_counter()
            batch_seconds, build_seconds = post_all(url, loaded, options, workers, mode)
            seconds = time.perf_counter() - t0
            check = ledger_check(url)
        result = {
            "variant": label,
            "batch_size": batch_size,
            "validate_balances": validate_balances,
            "workers": workers,
            "mode": mode,
            "build_seconds": build_seconds,
            "entries": total,
            "seconds": seconds,
            "rate": rate(total, seconds),
            "batch_seconds": batch_seconds,
            "check": check,
        }
        results.append(result)
        build = f", index build {build_seconds:.2f} s" if build_seconds is not None else ""
        say(
            f"  {label:<60} {seconds:7.2f} s = {fmt_rate(result['rate']):>10}"
            f"  (inside batch transactions {batch_seconds:.2f} s{build})  [{check_text(check)}]"
        )
    return results
