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
        ("ledger_no_fk", "COPY into ledger_entries without FKs"),
        ("ledger_unique_only", "COPY into ledger_entries, only PK + unique"),
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
    say("  targets (issues 7 and 15):")
    posting = [p for p in results.get("posting") or [] if p["validate_balances"]]
    best = max(posting, key=lambda p: p["rate"], default=None)
    default = next((p for p in posting if p["batch_size"] == 1000), posting[0] if posting else None)
    if default and best:
        say(
            f"    posting ≥ 100,000/s and ≥ 40× row-by-row: BATCH_SIZE={default['batch_size']} "
            f"{fmt_rate(default['rate'])} ({fmt_ratio(ratio(default['rate'], row))}); "
            f"best {best['variant']} {fmt_rate(best['rate'])} "
            f"({fmt_ratio(ratio(best['rate'], row))})"
            + verdict(best["rate"] >= 100_000 and bool(row) and best["rate"] >= 40 * row)
        )
    for key, limit in (("e2e_30d", 20.0), ("e2e_1096d", 60.0)):
        value = results.get(key)
        if isinstance(value, dict):
            ok = value["ok"] and value["wall_seconds"] <= limit
            say(
                f"    {value['entries']:,} over {value['days']} days ≤ {limit:.0f} s: "
                f"{value['wall_seconds']:.1f} s" + verdict(ok)
            )
    history = results.get("history")
    if isinstance(history, dict):
        ok = history["ok"] and history["wall_seconds"] <= 60.0
        per = 1000 * history["wall_seconds"] / history["days"]
        say(
            f"    {history['entries']:,} entries over {history['days']:,} daily partitions ≤ 60 s "
            f"(issue 15, target 4): {history['wall_seconds']:.1f} s, {per:.1f} ms per partition"
            + verdict(ok)
        )
    for n, run in rss_points:
        if n >= 10_000_000:
            say(
                f"    {n:,} entries peak RSS ≤ 1 GiB: {fmt_bytes(run.run.peak_rss)}"
                + verdict(run.run.ok and run.run.peak_rss <= GIB)
            )
    resume = results.get("resume")
    if resume:
        say(
            f"    resume redoes ≤ 1 batch: committed rows redone {resume['committed_rows_redone']}, "
            f"in-flight batch lost ≤ {resume['batch_size']} rows" + verdict(resume["ok"])
        )
