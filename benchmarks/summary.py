"""The closing table: entries/s of every path with its ratios to the seed's row-by-row path and to
COPY into ledger_entries, the peak RSS by source size, and each target of issue 7."""

from __future__ import annotations

from typing import Any

from benchmarks.common import GIB, fmt_bytes, fmt_rate, fmt_ratio, heading, ratio, say, verdict
from benchmarks.memory import RssPoint, print_rss


def rate_lines(results: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(path, entries/s, note) for every measured path, the row-by-row path first."""
    copies = results.get("copy") or {}
    lines: list[tuple[str, float | None, str]] = [
        ("seed row-by-row post_ledger_entry()", (results.get("row_by_row") or {}).get("rate"), ""),
        ("COPY into ledger_entries (the floor)", (copies.get("ledger") or {}).get("rate"), ""),
    ]
    for key, name in (
        ("ledger_outbox", "COPY into ledger_entries + dual_ledger_outbox"),
        ("ledger_no_fk", "COPY into ledger_entries without FKs"),
        ("ledger_unique_only", "COPY into ledger_entries, only PK + unique"),
        ("initial_floor", "COPY into both, PK + unique, then index build"),
        ("initial_floor_2", "the same, COPY in 2 sessions"),
        ("bare", "COPY into a bare table"),
        ("ledger_binary", "binary COPY (write_row) into ledger_entries"),
    ):
        if copies.get(key):
            lines.append((name, copies[key]["rate"], ""))
    for p in results.get("posting") or []:
        lines.append((f"posting stage, {p['variant']}", p["rate"], ""))
    for key, value in results.items():
        if key.startswith("e2e_") and isinstance(value, dict):
            note = f"wall {value['wall_seconds']:.1f} s" if value["ok"] else "FAILED"
            lines.append(
                (f"end to end, {value['entries']:,} over {value['days']} days", value["rate"], note)
            )
    return lines


def summary(results: dict[str, Any], rss_points: list[RssPoint]) -> None:
    heading("summary: entries/s, and ratios to the row-by-row path and to COPY into ledger_entries")
    lines = rate_lines(results)
    row, copy = lines[0][1], lines[1][1]
    say(f"  {'':<58} {'entries/s':>12} {'÷ row-by-row':>13} {'÷ COPY':>8}  note")
    for name, value, note in lines:
        say(
            f"  {name:<58} {fmt_rate(value):>12} {fmt_ratio(ratio(value, row)):>13}"
            f" {fmt_ratio(ratio(value, copy)):>8}  {note}"
        )
    if rss_points:
        say()
        print_rss(rss_points)
    say()
    targets(results, rss_points, row)


def targets(results: dict[str, Any], rss_points: list[RssPoint], row: float | None) -> None:
    """Each target of issue 15 with its figure from this run, met or missed."""
    from benchmarks.posting_stage import DEFAULT_BATCH_SIZE  # late: see cli.py, posting

    say("  targets (issue 15):")
    copies = results.get("copy") or {}
    floor_both = (copies.get("ledger_outbox") or {}).get("rate")
    floor_entries = (copies.get("ledger") or {}).get("rate")
    floor_unique = (copies.get("ledger_unique_only") or {}).get("rate")
    posting = results.get("posting") or []

    def find(mode: str, workers: int) -> dict[str, Any] | None:
        return next(
            (
                p
                for p in posting
                if p.get("mode", "live") == mode
                and p["workers"] == workers
                and p["validate_balances"]
                and p["batch_size"] == DEFAULT_BATCH_SIZE
            ),
            None,
        )

    def against(p: dict[str, Any] | None, floor: float | None, share: float, what: str) -> None:
        if p is None or not floor:
            say(f"    {what}: not measured in this run")
            return
        got = p["rate"] / floor
        say(
            f"    {what}: {p['variant']} {fmt_rate(p['rate'])} = {got:.2f} × floor "
            f"{fmt_rate(floor)} (target ≥ {share:.2f})" + verdict(got >= share)
        )

    against(find("live", 1), floor_both, 0.8, "1. live posting vs COPY into both tables")
    against(find("live", 2), floor_entries, 0.9, "1. live, 2 workers vs COPY into ledger_entries")
    initial = [p for p in (find("initial", 1), find("initial", 2)) if p]
    best = max(initial, key=lambda p: p["rate"], default=None)
    against(best, floor_unique, 0.66, "2. initial load incl. index build vs COPY, PK + unique")
    ceiling(copies, floor_unique)
    if best and row:
        say(
            f"    2. initial load vs the seed's row-by-row path: {best['rate'] / row:.0f}× "
            "(target ≥ 40×)" + verdict(best["rate"] >= 40 * row)
        )
    for key, limit in (("e2e_30d", 20.0), ("e2e_1096d", 40.0)):
        value = results.get(key)
        if isinstance(value, dict):
            ok = value["ok"] and value["wall_seconds"] <= limit
            say(
                f"    3. {value['entries']:,} over {value['days']} days ≤ {limit:.0f} s: "
                f"{value['wall_seconds']:.1f} s" + verdict(ok)
            )
            budget(value)
    history = results.get("history")
    if isinstance(history, dict):
        ok = history["ok"] and history["wall_seconds"] <= 60.0
        per = 1000 * history["wall_seconds"] / history["days"]
        say(
            f"    4. {history['entries']:,} entries over {history['days']:,} daily partitions "
            f"≤ 60 s: {history['wall_seconds']:.1f} s, {per:.1f} ms per partition" + verdict(ok)
        )
    for n, run in rss_points:
        if n >= 10_000_000:
            say(
                f"    5. {n:,} entries over {run.data.days} days, peak RSS ≤ 1 GiB: "
                f"{fmt_bytes(run.run.peak_rss)}" + verdict(run.run.ok and run.run.peak_rss <= GIB)
            )
    if not any(n >= 10_000_000 for n, _ in rss_points):
        largest = max(rss_points, key=lambda point: point[0], default=None)
        seen = (
            f"; the largest run here, {largest[0]:,} entries, peaked at "
            f"{fmt_bytes(largest[1].run.peak_rss)}"
            if largest
            else ""
        )
        say(
            "    5. 10,000,000 entries ≤ 1 GiB: not measured in this run "
            f"(--rss-entries 10000000){seen}"
        )
    resume = results.get("resume")
    if resume:
        say(
            f"    resume redoes ≤ 1 batch: committed rows redone {resume['committed_rows_redone']}, "
            f"in-flight batch lost ≤ {resume['batch_size']} rows" + verdict(resume["ok"])
        )


def ceiling(copies: dict[str, Any], floor_unique: float | None) -> None:
    """What no initial load can beat on this server: the entries and outbox rows COPYed with only
    the unique indexes, then the index build. Targets 2 and 3 are reachable only if it is."""
    for key in ("initial_floor", "initial_floor_2"):
        floor = copies.get(key)
        if not floor or not floor_unique:
            continue
        per_million = 1_000_000 / floor["rate"]
        say(
            f"       ceiling, COPY in {floor.get('sessions', 1)} session(s): COPY into both tables"
            f" (PK + unique) and the index build alone reach {fmt_rate(floor['rate'])} = "
            f"{floor['rate'] / floor_unique:.2f} × that floor, {per_million:.1f} s per million rows"
            " (target 3's posting budget: 10 s)"
        )


def budget(run: dict[str, Any]) -> None:
    """Target 3's budget per million rows: start-up ≤ 4 s, posting ≤ 10 s, the rest ≤ 6 s (from
    the run's profile: start-up is the process's time to RUN_START)."""
    profile = run.get("profile") or []
    if len(profile) < 3:
        return
    millions = max(run["entries"] / 1_000_000, 1e-9)
    startup = profile[0][1]
    posting = sum(v for name, v in profile if name.startswith("posted_batches"))
    rest = sum(v for _, v in profile[1:]) - posting
    for name, value, limit in (
        ("start-up", startup, 4.0),
        ("posting per million rows", posting / millions, 10.0),
        ("all other stages and checks per million rows", rest / millions, 6.0),
    ):
        say(f"       {name}: {value:.1f} s (≤ {limit:.0f} s)" + verdict(value <= limit))
