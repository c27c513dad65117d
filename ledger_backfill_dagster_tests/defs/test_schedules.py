"""daily_backfill_schedule's settings and its choice of day (the daemon-driven run is in
e2e/test_ui.py): the cron and zone are checked when the code location loads, and the day
requested is the UTC day closed before the tick, whatever the zone it ticks in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from ledger_backfill_dagster.defs.operations.schedules import (
    build_daily_backfill_schedule,
    closed_day,
    schedule_settings,
)
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.resources.settings import SourceSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BACKFILL_SCHEDULE_CRON", "every day"), ("BACKFILL_SCHEDULE_TIMEZONE", "Mars/Olympus")],
)
def test_a_wrong_cron_or_zone_fails_at_load_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        schedule_settings()


def test_the_closed_day_is_the_utc_day_before_the_tick() -> None:
    tick = datetime(2024, 3, 10, 22, 30, tzinfo=ZoneInfo("America/New_York"))  # 02:30 UTC, 11th
    with dg.build_schedule_context(scheduled_execution_time=tick) as context:
        assert closed_day(context) == "2024-03-10"


def test_defaults_stopped_and_an_scb_source_is_left_to_its_own_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BACKFILL_SCHEDULE_CRON", raising=False)
    monkeypatch.delenv("BACKFILL_SCHEDULE_TIMEZONE", raising=False)
    schedule = build_daily_backfill_schedule()
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 1 * * *", "UTC")
    tick = datetime(2024, 5, 2, 1, 30, tzinfo=ZoneInfo("UTC"))
    outcomes = []
    for source in (
        SourceSettings(source_type="SCB"),
        SourceSettings(source_type="CSV", source_file="x.csv"),
    ):
        with (
            dg.instance_for_test() as instance,
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=tick, resources={"source": source}
            ) as context,
        ):
            outcomes.append(schedule(context))
    skipped, request = outcomes
    assert isinstance(skipped, dg.SkipReason)
    assert "scb_daily_sync_schedule" in str(skipped.skip_message)
    assert isinstance(request, dg.RunRequest) and request.partition_key == "2024-05-01"
