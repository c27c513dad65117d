"""Schedules: the scheduled partition backfills. Every one is STOPPED until someone starts it.

  daily_backfill_schedule       every day (BACKFILL_SCHEDULE_CRON, default 01:30, in
                                BACKFILL_SCHEDULE_TIMEZONE, default UTC), backfill the UTC day
                                that closed before the tick, from the configured source (CSV,
                                DATABASE or API; an SCB source has its own schedule below);
  scb_daily_sync_schedule       at 01:30 UTC, backfill yesterday's partition from the SCB ledger
                                (a code location configured with BACKFILL_SOURCE_TYPE=SCB; any
                                other source type makes it skip, saying why);
  outbox_relay_schedule         every 15 minutes, deliver the PENDING dual-ledger outbox rows.

Each day is requested under a run key of its own, so a second tick for a day already requested
launches nothing. The cron and zone are read when the code location loads (they are part of the
schedule's definition). Start them in the UI (Automation) or with
`dagster schedule start daily_backfill_schedule -m ledger_backfill_dagster.definitions`.
"""

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string

from ledger_backfill_dagster.defs.backfill.jobs import ledger_backfill_job
from ledger_backfill_dagster.defs.dual_ledger.sync import dual_ledger_outbox_relay_job
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.lib.env import env_str
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.resources.settings import SourceSettings

DEFAULT_CRON, DEFAULT_ZONE = "30 1 * * *", "UTC"
# What launched a run or backfill (schedules here, catch_up_sensor), as a run tag.
TRIGGER_TAG, PARTITION_TAG = "ledger_backfill/trigger", "dagster/partition"
# Runs that ended without doing their work: a schedule may request their day again, and the
# alert sensor announces them.
ENDED_BADLY = frozenset({dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


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
        tags={TRIGGER_TAG: "scb_daily_sync_schedule"},
    )


def closed_day(context: dg.ScheduleEvaluationContext) -> str:
    """The last UTC day wholly before the tick, whatever zone the schedule ticks in."""
    return (context.scheduled_execution_time.astimezone(UTC) - timedelta(days=1)).strftime(
        "%Y-%m-%d"
    )


def schedule_settings() -> tuple[str, str]:
    """BACKFILL_SCHEDULE_CRON and BACKFILL_SCHEDULE_TIMEZONE, checked when the code location
    loads: a wrong value fails there, naming the variable."""
    cron = env_str("BACKFILL_SCHEDULE_CRON", DEFAULT_CRON).strip()
    zone = env_str("BACKFILL_SCHEDULE_TIMEZONE", DEFAULT_ZONE).strip()
    if not is_valid_cron_string(cron):
        raise SettingsError(f"BACKFILL_SCHEDULE_CRON is not a cron expression: {cron!r}")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"BACKFILL_SCHEDULE_TIMEZONE is not an IANA zone: {zone!r}") from None
    return cron, zone


def build_daily_backfill_schedule() -> dg.ScheduleDefinition:
    cron, zone = schedule_settings()

    @dg.schedule(
        name="daily_backfill_schedule",
        job=ledger_backfill_job,
        cron_schedule=cron,
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            f"Daily partition backfill ({cron}, {zone}): the UTC day closed before the tick, from "
            "the configured CSV, DATABASE or API source (SCB: scb_daily_sync_schedule)."
        ),
    )
    def daily_backfill_schedule(
        context: dg.ScheduleEvaluationContext, source: SourceSettings
    ) -> dg.RunRequest | dg.SkipReason:
        if source.source_type == "SCB":
            return dg.SkipReason("an SCB source is synced by scb_daily_sync_schedule")
        key = closed_day(context)
        if key not in daily_partitions.get_partition_keys(
            current_time=context.scheduled_execution_time
        ):
            return dg.SkipReason(f"{key} is before BACKFILL_START_DATE")
        # Dagster dedups a schedule's run keys within one tick only: a later tick must itself
        # see that the day was requested (a failed or canceled run may be requested again).
        earlier = context.instance.get_run_records(
            filters=dg.RunsFilter(
                tags={TRIGGER_TAG: "daily_backfill_schedule", PARTITION_TAG: key}
            ),
            limit=20,
        )
        if any(r.dagster_run.status not in ENDED_BADLY for r in earlier):
            return dg.SkipReason(f"{key} was requested already; nothing new")
        return dg.RunRequest(
            run_key=f"daily-backfill-{key}",
            partition_key=key,
            tags={TRIGGER_TAG: "daily_backfill_schedule"},
        )

    return daily_backfill_schedule


outbox_relay_schedule = dg.ScheduleDefinition(
    name="outbox_relay_schedule",
    job=dual_ledger_outbox_relay_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Deliver PENDING dual-ledger outbox rows every 15 minutes.",
)


def build_schedules() -> list[dg.ScheduleDefinition]:
    return [build_daily_backfill_schedule(), scb_daily_sync_schedule, outbox_relay_schedule]
