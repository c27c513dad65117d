"""The one partitioning of every asset: UTC days from BACKFILL_START_DATE through today."""

from __future__ import annotations

import dagster as dg

from ledger_backfill_dagster.lib.env import backfill_start_date

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=backfill_start_date(),
    timezone="UTC",
    end_offset=1,  # today's partition exists too: history up to the run's start is backfillable
)
