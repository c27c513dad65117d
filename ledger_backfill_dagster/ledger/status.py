"""Watching a backfill: the seed's monitoring queries and stall detection.

One snapshot (`read_status`) feeds `ledger-backfill status`, the `backfill_status` asset's table
in the UI and the stalled-backfill sensor, so all three always agree. A partition is *stalled*
when its checkpoint is IN_PROGRESS and has not advanced for longer than the threshold
(STALL_THRESHOLD_SECONDS, default one hour as in the seed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ledger_backfill_dagster.lib.sql_files import query

STATUS_ORDER = ("IN_PROGRESS", "PAUSED", "FAILED", "COMPLETED")
# Columns of the UI table: enough to act on, short enough to read.
TABLE_COLUMNS = [
    "source_id",
    "partition_key",
    "status",
    "stalled",
    "total_processed",
    "total_to_process",
    "total_successful",
    "total_failed",
    "total_duplicates",
    "total_conflicts",
    "total_rejected",
    "entries_per_second",
    "eta_seconds",
    "seconds_since_last_checkpoint",
    "last_checkpoint_at",
    "error_message",
]


@dataclass
class BackfillStatus:
    """Every checkpoint, the stalled ones, and per-source completion, read in one transaction."""

    stall_seconds: int
    checkpoints: list[dict[str, Any]]
    completion: list[dict[str, Any]]
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def stalled(self) -> list[dict[str, Any]]:
        return [r for r in self.checkpoints if r["stalled"]]

    @property
    def running(self) -> list[dict[str, Any]]:
        return [r for r in self.checkpoints if r["status"] == "IN_PROGRESS"]

    @property
    def attention(self) -> list[dict[str, Any]]:
        """What a person should look at: anything not COMPLETED (running, paused, failed)."""
        return [r for r in self.checkpoints if r["status"] != "COMPLETED"]

    def stalled_keys(self) -> list[str]:
        return sorted(f"{r['source_id']}|{r['partition_key']}" for r in self.stalled)

    def fingerprint(self) -> str:
        """Changes whenever a checkpoint moves or changes state (not with the clock alone)."""
        moving = [
            (
                r["source_id"],
                r["partition_key"],
                r["status"],
                r["total_processed"],
                r["stalled"],
                str(r["last_checkpoint_at"]),
            )
            for r in self.checkpoints
        ]
        return hashlib.sha256(json.dumps(moving, default=str).encode()).hexdigest()[:16]

    def as_json(self) -> dict[str, Any]:
        return {
            "stall_threshold_seconds": self.stall_seconds,
            "by_status": self.by_status,
            "stalled": [_plain(r) for r in self.stalled],
            "checkpoints": [_plain(r) for r in self.checkpoints],
            "completion": [_plain(r) for r in self.completion],
        }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: timestamps as ISO text, decimals as exact text, counts as ints."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = str(value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


def read_status(
    conn: psycopg.Connection, stall_seconds: int, source: str | None = None
) -> BackfillStatus:
    """The seed's three monitoring queries (progress, stalled, completion) for one source or all;
    a partition is stalled after `stall_seconds` without a checkpoint."""
    params = {"stall": stall_seconds, "source": source}
    with conn.cursor(row_factory=dict_row) as cur:
        checkpoints = cur.execute(query("monitoring/backfill_progress"), params).fetchall()
        completion = cur.execute(query("monitoring/backfill_completion"), params).fetchall()
    by_status: dict[str, int] = {}
    for row in checkpoints:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    return BackfillStatus(stall_seconds, checkpoints, completion, by_status)


def schema_missing(exc: BaseException) -> bool:
    """True when the ledger's tables do not exist yet (nothing was ever migrated)."""
    return isinstance(exc, psycopg.errors.UndefinedTable)


# -- text, for the CLI and the alert -----------------------------------------------------------
def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def checkpoint_line(r: dict[str, Any]) -> str:
    done = f"{r['total_processed']}/{r['total_to_process'] or 0}"
    rate = f"  {r['entries_per_second']} entries/s" if r.get("entries_per_second") else ""
    eta = f"  ETA {_duration(r['eta_seconds'])}" if r.get("eta_seconds") is not None else ""
    flag = (
        f"  STALLED (no checkpoint for {_duration(r['seconds_since_last_checkpoint'])})"
        if r["stalled"]
        else ""
    )
    last = r["last_checkpoint_at"]
    last_text = f"{last:%Y-%m-%d %H:%M:%S}" if last else "-"
    return (
        f"{r['partition_key']}  {r['status']:<11} {done:>15} processed  "
        f"{r['total_successful']} ok  {r['total_duplicates']} dup  {r['total_conflicts']} conflict  "
        f"{r['total_rejected']} rejected  last checkpoint {last_text}{rate}{eta}{flag}"
    )


def status_text(status: BackfillStatus) -> str:
    if not status.checkpoints and not status.completion:
        return "no backfill checkpoints yet"
    lines: list[str] = []
    current = None
    for r in status.checkpoints:
        if r["source_id"] != current:
            current = r["source_id"]
            lines.append(f"source {current} ({r['source_type']})")
        lines.append("  " + checkpoint_line(r))
        if r["error_message"]:
            lines.append(f"              {r['error_message']}")
    lines.append("")
    lines.append(
        "partitions by status: "
        + ", ".join(f"{s} {status.by_status[s]}" for s in STATUS_ORDER if status.by_status.get(s))
    )
    for c in status.completion:
        span = (
            f"{c['earliest']:%Y-%m-%d %H:%M} .. {c['latest']:%Y-%m-%d %H:%M}"
            if c["earliest"]
            else "-"
        )
        lines.append(
            f"completion {c['source_id']}: {c['partitions_completed']}/{c['partitions']} partitions"
            f" completed, {c['total_processed']}/{c['total_to_process']} rows processed,"
            f" {c['total_entries']} entries posted ({span})"
        )
    if status.stalled:
        lines.append(
            f"STALLED: {len(status.stalled)} partition(s) IN_PROGRESS with no checkpoint for more"
            f" than {status.stall_seconds} s: "
            + ", ".join(f"{r['partition_key']}" for r in status.stalled)
        )
    return "\n".join(lines)


def alert_text(status: BackfillStatus) -> str:
    stalled = status.stalled
    names = ", ".join(f"{r['source_id']} {r['partition_key']}" for r in stalled[:20])
    more = f" and {len(stalled) - 20} more" if len(stalled) > 20 else ""
    return (
        f":warning: ledger backfill stalled: {len(stalled)} partition(s) IN_PROGRESS with no"
        f" checkpoint for more than {status.stall_seconds} s: {names}{more}. Check the run in the"
        " Dagster UI; `ledger-backfill status` shows the details (docs/operations.md, 'Stalled')."
    )
