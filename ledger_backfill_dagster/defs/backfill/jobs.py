"""Jobs: the whole backfill as one partitioned job, for `dagster job execute` and schedules."""

from __future__ import annotations

import dagster as dg

from ledger_backfill_dagster.defs.backfill.common import GROUP
from ledger_backfill_dagster.defs.partitions import daily_partitions

ledger_backfill_job = dg.define_asset_job(
    name="ledger_backfill_job",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily_partitions,
    description="Extract → transform → validate → post → reconcile, for the partition(s) given.",
)
