"""6. Memory: the peak RSS of end-to-end runs over larger sources (`--rss-entries`), against the
main source's run over the same number of partitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.common import Server, dataset, fmt_bytes, heading, say
from benchmarks.end_to_end import E2E, bench_e2e

# (entries of the source, its end-to-end run)
RssPoint = tuple[int, E2E]


def bench_memory(
    server: Server,
    work: Path,
    sizes: list[int],
    days: int,
    start: date,
    accounts: int,
    seed: int,
    batch_size: int,
    cap_bytes: int,
    section: Callable[[str, Callable[[], Any]], Any],
) -> list[RssPoint]:
    """One end-to-end run per source size, each reported as its own section."""
    points: list[RssPoint] = []
    for n in sizes:
        heading(f"6. memory: {n:,} entries over {days} partitions")
        data = dataset(work, n, days, start, accounts, seed)
        run = section(
            f"rss_{n}",
            lambda data=data, n=n: bench_e2e(
                server, data, f"rss-{n}-{days}d", work, batch_size, cap_bytes
            ),
        )
        if run is not None:
            points.append((n, run))
    return points


def print_rss(points: list[RssPoint]) -> None:
    say("  peak RSS of the end-to-end backfill by source size:")
    base_n, base_run = points[0]
    for n, run in points:
        r = run.run
        growth = r.peak_rss / base_run.run.peak_rss if base_run.run.peak_rss else 0
        state = "" if r.ok else (" KILLED at cap" if r.killed_over_cap else " FAILED")
        say(
            f"    {n:>12,} entries: {fmt_bytes(r.peak_rss):>10}"
            f"  (×{growth:.2f} for ×{n / base_n:.1f} entries){state}"
        )
