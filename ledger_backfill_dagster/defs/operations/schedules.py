"""Schedules: the scheduled partition backfills. Every one is STOPPED until someone starts it.

  scb_daily_sync_schedule       at 01:30 UTC, backfill yesterday's partition from the SCB ledger
                                (a code location configured with BACKFILL_SOURCE_TYPE=SCB; any
                                other source type makes it skip, saying why);
  outbox_relay_schedule         every 15 minutes, deliver the PENDING dual-ledger outbox rows.

Start them in the UI (Automation) or with `dagster schedule start scb_daily_sync_schedule`.
"""

from datetime import timedelta

import dagster as dg

from ledger_backfill_dagster.defs.backfill.jobs import ledger_backfill_job
from ledger_backfill_dagster.defs.dual_ledger.sync import dual_ledger_outbox_relay_job
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.resources.settings import SourceSettings


def yesterday(context: dg.ScheduleEvaluationContext) -> str:
    """The UTC day before the tick: the last whole day the SCB has closed."""
    return (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")


@dg.schedule(
    job=ledger_backfill_job,
    cron_schedule="30 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily SCB dual-ledger sync: backfill yesterday's partition from the SCB ledger.",
)
def scb_daily_sync_schedule(
    context: dg.ScheduleEvaluationContext, source: SourceSettings
) -> dg.RunRequest | dg.SkipReason:
    if source.source_type != "SCB":
        return dg.SkipReason(
            f"BACKFILL_SOURCE_TYPE is {source.source_type}, not SCB: nothing to sync"
        )
    key = yesterday(context)
    if key not in daily_partitions.get_partition_keys(
        current_time=context.scheduled_execution_time
    ):
        return dg.SkipReason(f"{key} is before BACKFILL_START_DATE")
    return dg.RunRequest(
        run_key=f"scb-daily-sync-{key}",
        partition_key=key,
        tags={"ledger_backfill/trigger": "scb_daily_sync_schedule"},
    )


outbox_relay_schedule = dg.ScheduleDefinition(
    name="outbox_relay_schedule",
    job=dual_ledger_outbox_relay_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Deliver PENDING dual-ledger outbox rows every 15 minutes.",
)

SCHEDULES = [scb_daily_sync_schedule, outbox_relay_schedule]
