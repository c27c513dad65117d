"""Operations: the backfill's status as a table in the UI, and the no-stalled-backfills check.

`backfill_status` is an asset that no run computes: the stalled-backfill sensor (sensors.py)
records its materializations, with the status table as metadata, whenever the checkpoints move,
plus a result of its `no_stalled_backfills` check. Recording from the sensor works while the run
queue is full (a stalled backfill may be the one holding it), and keeps `--select '*'` of the
partitioned backfill free of an unpartitioned asset. The check can also be executed on demand
("Execute check" in the UI); it runs the same query.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ledger_backfill_dagster.ledger.status import (
    TABLE_COLUMNS,
    BackfillStatus,
    read_status,
    schema_missing,
    status_text,
)
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings

OPERATIONS_GROUP = "operations"
STATUS_ASSET = dg.AssetKey("backfill_status")
STALL_CHECK = "no_stalled_backfills"

backfill_status = dg.AssetSpec(
    key=STATUS_ASSET,
    group_name=OPERATIONS_GROUP,
    kinds={"postgres"},
    description=(
        "Every backfill checkpoint: progress, rate and ETA of running partitions, stalled ones "
        "(IN_PROGRESS with no checkpoint for STALL_THRESHOLD_SECONDS, default 3600), paused and "
        "failed ones with their message, and per-source completion (entries posted, earliest, "
        "latest). Recorded by `stalled_backfill_sensor` whenever a checkpoint moves; the same "
        "numbers as `ledger-backfill status`."
    ),
)


@dg.asset_check(asset=STATUS_ASSET, name=STALL_CHECK, blocking=False)
def no_stalled_backfills(
    ledger_db: LedgerDatabase, monitoring: MonitoringSettings
) -> dg.AssetCheckResult:
    """Fails (severity ERROR) while any checkpoint is IN_PROGRESS without a new checkpoint for
    longer than STALL_THRESHOLD_SECONDS (default 3600 s, the seed's one hour)."""
    with ledger_db.connection() as conn:
        try:
            status = read_status(conn, monitoring.stall_threshold_seconds)
        except Exception as exc:
            if schema_missing(exc):
                return dg.AssetCheckResult(passed=True, description="no backfill has run yet")
            raise
    return dg.AssetCheckResult(
        passed=not status.stalled,
        severity=dg.AssetCheckSeverity.ERROR,
        description=stall_description(status),
        metadata=stall_check_metadata(status),
    )


def stall_description(status: BackfillStatus) -> str:
    if status.stalled:
        names = ", ".join(r["partition_key"] for r in status.stalled[:10])
        return (
            f"{len(status.stalled)} partition(s) stalled (no checkpoint for more than "
            f"{status.stall_seconds} s): {names}"
        )
    return f"no partition stalled for more than {status.stall_seconds} s"


def stall_check_metadata(status: BackfillStatus) -> dict[str, dg.MetadataValue]:
    return {
        "stall_threshold_seconds": dg.MetadataValue.int(status.stall_seconds),
        "stalled_partitions": dg.MetadataValue.int(len(status.stalled)),
        "stalled": status_table(status.stalled),
    }


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
