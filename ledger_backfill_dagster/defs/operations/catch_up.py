"""The catch-up: every closed UTC day whose posting is missing or failed, requested again as one
Dagster backfill (not a run per day).

`catch_up_sensor` (STOPPED until started; every CATCH_UP_SENSOR_INTERVAL_SECONDS, default 3600,
read when the code location loads) looks at `posted_batches` over every closed day from
BACKFILL_START_DATE. Days never materialized or whose last materialization failed are requested
for all five stages in one backfill, which the daemon splits into runs by the assets' backfill
policy (BACKFILL_MAX_PARTITIONS_PER_RUN). It requests nothing while its previous backfill is
still running, and nothing when the days missing are exactly those its previous backfill already
tried (they failed again: a person must look; each failed run was alerted)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.partition_status_cache import AssetPartitionStatus

from ledger_backfill_dagster.defs.backfill.common import GROUP
from ledger_backfill_dagster.defs.backfill.post import posted_batches
from ledger_backfill_dagster.defs.operations.schedules import TRIGGER_TAG
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.lib.env import env_int

SENSOR_NAME = "catch_up_sensor"
# The five stages, selected as ledger_backfill_job selects them.
STAGES = dg.AssetSelection.groups(GROUP)
RUNNING = {BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING}


def _days_to_catch_up(instance: dg.DagsterInstance, now: datetime) -> list[str]:
    today = now.date().isoformat()
    closed = [k for k in daily_partitions.get_partition_keys(current_time=now) if k < today]
    status = instance.get_status_by_partition(posted_batches.key, closed, daily_partitions) or {}
    return [k for k in closed if status.get(k) in (None, AssetPartitionStatus.FAILED)]


def catch_up_tick(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    instance = context.instance
    backfills = instance.get_backfills(limit=50)
    if any(b.tags.get(TRIGGER_TAG) == SENSOR_NAME and b.status in RUNNING for b in backfills):
        return dg.SkipReason("the previous catch-up backfill is still running")
    days = _days_to_catch_up(instance, datetime.now(UTC))
    if not days:
        return dg.SkipReason("every closed day is posted")
    digest = hashlib.sha256(json.dumps(days).encode()).hexdigest()
    if context.cursor == digest:
        return dg.SkipReason(
            f"{len(days)} day(s) still missing or failed after the last catch-up requested "
            f"exactly them ({days[0]}..{days[-1]}): nothing new; look at their failed runs"
        )
    assert context.repository_def is not None
    asset_graph = context.repository_def.asset_graph
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, day) for key in STAGES.resolve(asset_graph) for day in days},
        asset_graph,
    )
    context.update_cursor(digest)
    context.log.info(f"catch-up: {len(days)} day(s) requested, {days[0]}..{days[-1]}")
    return dg.RunRequest.for_asset_graph_subset(subset, tags={TRIGGER_TAG: SENSOR_NAME})


def build_catch_up_sensor() -> dg.SensorDefinition:
    interval = env_int("CATCH_UP_SENSOR_INTERVAL_SECONDS", 3600, minimum=1, maximum=86_400)
    return dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.STOPPED,
        asset_selection=STAGES,  # what its backfills may target
        description=(
            "Requests every closed day whose posting is missing or failed, for all five stages, "
            "as one backfill; nothing while its previous backfill runs, nothing if the same days "
            "failed again."
        ),
    )(catch_up_tick)
