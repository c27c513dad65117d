"""3. The posting stage alone: the pipeline's validated Parquet in, `post_partition` per partition
with one balance verifier and one set of reused sessions per run (as the posted_batches asset
does), for each BATCH_SIZE asked, without the balance check, and with partitions in parallel."""

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
from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
from ledger_backfill_dagster.ledger.posting import (
    PartitionPlan,
    PostingOptions,
    PostingOutcome,
    PostingSessions,
    post_partition,
)
from ledger_backfill_dagster.resources.stage_store import arrow_text

# (BATCH_SIZE, VALIDATE_BALANCES, PARALLEL_WORKERS)
Variant = tuple[int, bool, int]


def variants(batch_sizes: list[int], posting_workers: int) -> list[Variant]:
    """Each size with the balance check, the first without it, the largest in parallel."""
    found = [(b, True, 1) for b in batch_sizes]
    if found:
        found.append((found[0][0], False, 1))
        if posting_workers > 1:
            found.append((max(batch_sizes), True, posting_workers))
    return found


def variant_label(batch_size: int, validate_balances: bool, workers: int) -> str:
    return (
        f"BATCH_SIZE={batch_size}"
        + ("" if validate_balances else ", VALIDATE_BALANCES=false")
        + (f", PARALLEL_WORKERS={workers}" if workers > 1 else "")
    )


def post_all(
    url: str, loaded: list[tuple[str, pd.DataFrame]], options: PostingOptions, workers: int
) -> float:
    """Post every partition as one run; returns the seconds spent inside batch transactions."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    verifier = BalanceVerifier()
    with (
        PostingSessions(lambda: psycopg.connect(url)) as sessions,
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
    for batch_size, validate_balances, workers in wanted:
        label = variant_label(batch_size, validate_balances, workers)
        with server.database(f"post{batch_size}") as url:
            prepare_ledger(url, data.accounts_file)
            options = PostingOptions(batch_size=batch_size, validate_balances=validate_balances)
            t0 = time.perf_counter()
            batch_seconds = post_all(url, loaded, options, workers)
            seconds = time.perf_counter() - t0
            check = ledger_check(url)
        result = {
            "variant": label,
            "batch_size": batch_size,
            "validate_balances": validate_balances,
            "workers": workers,
            "entries": total,
            "seconds": seconds,
            "rate": rate(total, seconds),
            "batch_seconds": batch_seconds,
            "check": check,
        }
        results.append(result)
        say(
            f"  {label:<42} {seconds:7.2f} s = {fmt_rate(result['rate']):>10}"
            f"  (inside batch transactions {batch_seconds:.2f} s)  [{check_text(check)}]"
        )
    return results
