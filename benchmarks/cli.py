"""The command line: `python -m benchmarks [options]` runs the sections asked, in order, on one
server, then prints the summary and writes the results as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import GIB, MIB, REPO, Server, dataset, heading, say, server_for
from benchmarks.copy_floor import bench_copy
from benchmarks.end_to_end import E2E, bench_e2e, prepare_validated, validated_frames
from benchmarks.memory import RssPoint, bench_memory
from benchmarks.row_by_row import bench_row_by_row
from benchmarks.summary import summary

DESCRIPTION = (
    "The backfill benchmark: the seed's row-by-row path, the COPY floor, our posting stage and "
    "our end-to-end backfill, measured in one run on one PostgreSQL server (benchmarks/README.md)."
)
SECTIONS = ["rowbyrow", "copy", "e2e", "history", "posting", "resume", "rss"]


def int_list(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip() and int(v) > 0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    p.add_argument("--entries", type=int, default=1_000_000, help="entries of the main source")
    p.add_argument(
        "--days",
        default="30,1096",
        help="comma list: daily partitions of each end-to-end run (the first also feeds the "
        "posting stage and the memory runs); default 30,1096",
    )
    p.add_argument(
        "--accounts",
        type=int,
        default=2000,
        help="accounts in the generated chart (2,000: a bank's chart, issue 15)",
    )
    p.add_argument(
        "--history-days",
        type=int,
        default=9132,
        help="daily partitions of the long-history run (9,132: 25 years; 0: none)",
    )
    p.add_argument(
        "--history-entries", type=int, default=7000, help="entries of the long-history run"
    )
    p.add_argument(
        "--history-start", default="2001-01-01", help="first day of the long-history run"
    )
    p.add_argument("--start", default="2022-01-01", help="first day of the generated data")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--database-url",
        help="admin URL of the PostgreSQL server to use (fresh databases are created on it and "
        "dropped); default: the embedded server",
    )
    p.add_argument("--row-by-row-sample", type=int, default=20_000)
    p.add_argument(
        "--batch-sizes",
        default="1000,10000,50000",
        help="BATCH_SIZE values for the posting stage (comma list)",
    )
    p.add_argument(
        "--e2e-batch-size",
        type=int,
        default=None,
        help="BATCH_SIZE of the end-to-end runs (default: the product's default, as a user runs it)",
    )
    p.add_argument(
        "--posting-workers",
        type=int,
        default=2,
        help="also post the largest --batch-sizes value with this many partitions in parallel "
        "(PARALLEL_WORKERS; 1: not)",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of what to run, in this order: {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end, resume or memory runs")
    p.add_argument("--skip-binary-copy", action="store_true")
    p.add_argument("--skip-resume", action="store_true")
    p.add_argument(
        "--rss-entries",
        default="2000000",
        help="comma list of source sizes for the peak-RSS runs (e.g. 2000000,10000000); 0: none",
    )
    p.add_argument(
        "--rss-cap-gib",
        type=float,
        default=12.0,
        help="kill an end-to-end run whose process tree passes this RSS (protects the machine)",
    )
    p.add_argument("--work-dir", default=str(REPO / ".state" / "bench"))
    p.add_argument(
        "--json", help="also write the results here (default: <work-dir>/results-*.json)"
    )
    return p.parse_args(argv)


def machine(server: Server) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not commit:
        commit, dirty = "unknown (not a git checkout)", ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "server": server.description,
        "postgres": server.info(),
        "git": commit + (" (+ uncommitted changes)" if dirty else ""),
        "load_average_start": os.getloadavg(),
    }


def print_machine(m: dict[str, Any]) -> None:
    say(
        f"  {m['nproc']} cores ({m['cpu']}), {m['ram_bytes'] / GIB:.1f} GiB RAM, Python "
        f"{m['python']}, git {m['git']}"
    )
    pg = m["postgres"]
    say(
        f"  PostgreSQL {pg['server_version']} ({m['server']}): shared_buffers "
        f"{pg['shared_buffers']}, synchronous_commit {pg['synchronous_commit']}, fsync "
        f"{pg['fsync']}"
    )
    say(f"  load average at start: {' '.join(f'{v:.2f}' for v in m['load_average_start'])}")


def wanted_sections(args: argparse.Namespace) -> set[str]:
    wanted = {w.strip() for w in args.sections.split(",") if w.strip()}
    if unknown := wanted - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    if args.skip_e2e:
        wanted -= {"e2e", "resume", "rss"}
    if args.skip_resume:
        wanted.discard("resume")
    return wanted


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = date.fromisoformat(args.start)
    days = int_list(args.days)
    if not days:
        raise SystemExit("--days needs at least one value")
    if start + timedelta(days=max(days)) > date.today():
        raise SystemExit(f"--start {start} + {max(days)} days reaches past today")
    cap = int(args.rss_cap_gib * GIB)
    wanted = wanted_sections(args)

    server = server_for(args.database_url)
    results: dict[str, Any] = {"args": vars(args), "errors": {}}
    t_all = time.perf_counter()

    def section(name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
            results[name] = value
            return value
        except Exception as exc:  # a failed section is reported, the others still run
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            return None

    try:
        heading("machine")
        results["machine"] = machine(server)
        print_machine(results["machine"])

        heading("data (the project's generator)")
        main_data = {
            d: dataset(work, args.entries, d, start, args.accounts, args.seed) for d in days
        }
        first_days = days[0]
        for generated in main_data.values():
            size = generated.entries_file.stat().st_size
            say(f"  {generated.entries_file} ({size / MIB:,.0f} MiB)")

        base = main_data[first_days]
        if "rowbyrow" in wanted:
            heading(f"1. the seed's row-by-row path ({args.row_by_row_sample:,}-entry sample)")
            section("row_by_row", lambda: bench_row_by_row(server, base, args.row_by_row_sample))

        if "copy" in wanted:
            heading(f"2. COPY floor ({args.entries:,} rows)")
            section("copy", lambda: bench_copy(server, base, not args.skip_binary_copy))

        e2e_runs: list[E2E] = []
        frames: list[tuple[str, Path]] = []
        prep_home: Path | None = None
        if "e2e" in wanted:
            for d in days:
                data = main_data[d]
                label = f"e2e-{args.entries}-{d}d"
                heading(f"4. end to end: {data.entries:,} entries, {d} daily partitions")
                run = section(
                    f"e2e_{d}d",
                    lambda data=data, label=label, d=d: bench_e2e(
                        server,
                        data,
                        label,
                        work,
                        args.e2e_batch_size,
                        cap,
                        keep_home=(d == first_days),
                    ),
                )
                if run is not None:
                    results[f"e2e_{d}d"] = run.summary()
                    e2e_runs.append(run)
                    if d == first_days and run.run.ok:
                        prep_home = run.home
        if "history" in wanted and args.history_days:
            history = dataset(
                work,
                args.history_entries,
                args.history_days,
                date.fromisoformat(args.history_start),
                args.accounts,
                args.seed,
            )
            heading(
                f"4b. a long history: {history.entries:,} entries over {history.days:,} daily "
                "partitions, from an empty instance"
            )
            run = section(
                "history",
                lambda: bench_e2e(server, history, "history", work, args.e2e_batch_size, cap),
            )
            if run is not None:
                results["history"] = run.summary()
        if prep_home is None and {"posting", "resume"} & wanted:
            heading("3. (preparing validated entries: extract → transform → validate)")
            prep = section("prepare", lambda: prepare_validated(server, base, work, cap))
            if prep is not None:
                results["prepare"] = prep.summary()
                prep_home = prep.home
        if prep_home is not None:
            frames = validated_frames(prep_home)
        if "posting" in wanted:
            heading(
                "3. posting stage alone (validated entries → ledger + balances + outbox + "
                "checkpoint)"
            )
            if frames:
                # Imported only after the end-to-end runs: loaded earlier, they disturb those
                # runs' polled RSS (benchmarks/README.md, "Peak RSS").
                from benchmarks.posting_stage import bench_posting, variants

                chosen = variants(int_list(args.batch_sizes), args.posting_workers)
                section("posting", lambda: bench_posting(server, base, frames, chosen))
            else:
                say("  skipped: no validated entries (the preparing run failed)")

        if "resume" in wanted and frames:
            from ledger_backfill_dagster.ledger.posting import PostingOptions  # late, as above

            resume_batch = args.e2e_batch_size or PostingOptions().batch_size
            heading(f"5. resume after SIGKILL mid-partition (BATCH_SIZE={resume_batch})")
            from benchmarks.resume import bench_resume  # late, as bench_posting above

            section("resume", lambda: bench_resume(server, base, frames, resume_batch))
        if prep_home is not None:
            shutil.rmtree(prep_home, ignore_errors=True)

        rss_points: list[RssPoint] = [
            (r.data.entries, r) for r in e2e_runs if r.data.days == first_days
        ]
        if "rss" in wanted:
            measured = bench_memory(
                server,
                work,
                int_list(args.rss_entries),
                first_days,
                start,
                args.accounts,
                args.seed,
                args.e2e_batch_size,
                cap,
                section,
            )
            for n, run in measured:
                results[f"rss_{n}"] = run.summary()
            rss_points += measured
        summary(results, rss_points)
    finally:
        server.drop_all()
        results["load_average_end"] = os.getloadavg()
        results["total_seconds"] = time.perf_counter() - t_all
        out = (
            Path(args.json) if args.json else work / f"results-{datetime.now():%Y%m%d-%H%M%S}.json"
        )
        out.write_text(json.dumps(results, indent=1, default=str))
        say()
        say(
            f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
            f"benchmark took {results['total_seconds'] / 60:.1f} min; results in {out}"
        )
    return 1 if results["errors"] else 0
