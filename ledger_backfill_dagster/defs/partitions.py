"""The one partitioning of every asset: UTC days from BACKFILL_START_DATE through today, and how a
partition backfill of them is split into runs (BACKFILL_MAX_PARTITIONS_PER_RUN)."""

from __future__ import annotations

import dagster as dg

from ledger_backfill_dagster.lib.env import backfill_start_date, env_int

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=backfill_start_date(),
    timezone="UTC",
    end_offset=1,  # today's partition exists too: history up to the run's start is backfillable
)

MAX_PARTITIONS_PER_RUN_ENV = "BACKFILL_MAX_PARTITIONS_PER_RUN"


def backfill_policy() -> dg.BackfillPolicy:
    """The assets' backfill policy, read when the code location loads (it is part of their
    definitions): BACKFILL_MAX_PARTITIONS_PER_RUN unset or 0, a backfill launched from the UI is
    one run over its whole range (each stage once over all its days); n, runs of at most n
    partitions, which the daemon runs concurrently within the `ledger_pg` pool and each of which
    resumes on its own. Either way a day is posted once (checkpoints), whichever run posts it."""
    most = env_int(MAX_PARTITIONS_PER_RUN_ENV, 0, minimum=0, maximum=100_000)
    return dg.BackfillPolicy.multi_run(most) if most else dg.BackfillPolicy.single_run()
