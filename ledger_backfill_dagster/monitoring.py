"""Watching a backfill: the seed's monitoring queries, stall detection and the alert hook.

One snapshot (`read_status`) feeds `ledger-backfill status`, the `backfill_status` asset's table
in the UI and the stalled-backfill sensor, so all three always agree. A partition is *stalled*
when its checkpoint is IN_PROGRESS and has not advanced for longer than the threshold
(STALL_THRESHOLD_SECONDS, default one hour as in the seed).

The alert hook is off by default. With STALL_ALERT_WEBHOOK_URL set (a Slack incoming webhook, or
any endpoint that accepts `{"text": ...}` JSON, e.g. an e-mail relay), the sensor POSTs one
message per newly stalled partition set. The URL is a secret (Slack's carry a token): it reaches
the sensor through `dg.EnvVar` and is never logged; failures are reported without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import dagster as dg
import httpx
import psycopg
from psycopg.rows import dict_row
from pydantic import Field

from ledger_backfill_dagster.resources.ledger_database import redact
from ledger_backfill_dagster.settings import env_int
from ledger_backfill_dagster.sql_files import query

DEFAULT_STALL_SECONDS = 3600
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


def stall_threshold_seconds() -> int:
    """STALL_THRESHOLD_SECONDS, default 3600 (the seed's one hour)."""
    return env_int("STALL_THRESHOLD_SECONDS", DEFAULT_STALL_SECONDS, minimum=1)


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
    conn: psycopg.Connection, stall_seconds: int | None = None, source: str | None = None
) -> BackfillStatus:
    """The seed's three monitoring queries (progress, stalled, completion) for one source or all."""
    stall = stall_threshold_seconds() if stall_seconds is None else stall_seconds
    params = {"stall": stall, "source": source}
    with conn.cursor(row_factory=dict_row) as cur:
        checkpoints = cur.execute(query("backfill_progress"), params).fetchall()
        completion = cur.execute(query("backfill_completion"), params).fetchall()
    by_status: dict[str, int] = {}
    for row in checkpoints:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
    return BackfillStatus(stall, checkpoints, completion, by_status)


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


# -- the UI table ------------------------------------------------------------------------------
def status_table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    """Checkpoint rows as a UI table, every value as text (exact, and None shown empty)."""
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in TABLE_COLUMNS])
    records = [
        dg.TableRecord({c: "" if r.get(c) is None else str(r.get(c)) for c in TABLE_COLUMNS})
        for r in rows[:500]
    ]
    return dg.MetadataValue.table(records, schema=schema)


def status_metadata(status: BackfillStatus) -> dict[str, dg.MetadataValue]:
    completion_columns = [
        "source_id",
        "partitions",
        "partitions_completed",
        "total_to_process",
        "total_processed",
        "total_entries",
        "earliest",
        "latest",
    ]
    completion = dg.MetadataValue.table(
        [
            dg.TableRecord(
                {c: "" if r.get(c) is None else str(r.get(c)) for c in completion_columns}
            )
            for r in status.completion
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in completion_columns]),
    )
    return {
        "stall_threshold_seconds": dg.MetadataValue.int(status.stall_seconds),
        "partitions_in_progress": dg.MetadataValue.int(status.by_status.get("IN_PROGRESS", 0)),
        "partitions_stalled": dg.MetadataValue.int(len(status.stalled)),
        "partitions_paused": dg.MetadataValue.int(status.by_status.get("PAUSED", 0)),
        "partitions_failed": dg.MetadataValue.int(status.by_status.get("FAILED", 0)),
        "partitions_completed": dg.MetadataValue.int(status.by_status.get("COMPLETED", 0)),
        "not_completed": status_table(status.attention),
        "stalled": status_table(status.stalled),
        "completion": completion,
        "summary": dg.MetadataValue.md(f"```\n{status_text(status)}\n```"),
    }


# -- the alert hook ----------------------------------------------------------------------------
class AlertDeliveryError(RuntimeError):
    """The webhook did not accept the alert (the message never contains the URL)."""


class StallAlertHook(dg.ConfigurableResource):
    """Where stalled-backfill alerts go besides the UI: a webhook, off unless configured.

    Slack: create an incoming webhook and set STALL_ALERT_WEBHOOK_URL to it. E-mail: point it at
    any relay that accepts `{"text": ...}` JSON, or use Dagster's own e-mail sensors.
    """

    webhook_url: str | None = Field(
        default=None,
        description="STALL_ALERT_WEBHOOK_URL, given as an EnvVar (a secret). Unset: no alert leaves the UI.",
    )
    timeout_seconds: float = Field(default=10.0)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    def send(self, text: str) -> bool:
        """POST `{"text": text}`; returns False when the hook is off. Never shows the URL."""
        if not self.webhook_url:
            return False
        try:
            response = httpx.post(
                self.webhook_url, json={"text": text}, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"alert webhook unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise AlertDeliveryError(f"alert webhook answered HTTP {response.status_code}")
        return True


def alert_hook_from_env() -> StallAlertHook:
    """The hook for the code location: the URL stays an EnvVar reference, resolved in the daemon."""
    if os.environ.get("STALL_ALERT_WEBHOOK_URL"):
        return StallAlertHook(webhook_url=dg.EnvVar("STALL_ALERT_WEBHOOK_URL"))
    return StallAlertHook()


def safe_error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")
