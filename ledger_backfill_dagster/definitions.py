"""The code location: one Definitions with every asset, job and resource."""

from __future__ import annotations

import os

import dagster as dg

from ledger_backfill_dagster.defs.backfill.checks import LEDGER_CHECKS
from ledger_backfill_dagster.defs.backfill.extract import extracted_source
from ledger_backfill_dagster.defs.backfill.jobs import ledger_backfill_job
from ledger_backfill_dagster.defs.backfill.post import posted_batches
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.defs.backfill.transform import transformed_entries
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.defs.dual_ledger.sync import DUAL_LEDGER_CHECKS, DUAL_LEDGER_JOBS
from ledger_backfill_dagster.defs.execution.executor import ledger_in_process_executor
from ledger_backfill_dagster.defs.maintenance.jobs import MAINTENANCE_JOBS
from ledger_backfill_dagster.defs.operations.schedules import SCHEDULES
from ledger_backfill_dagster.defs.operations.sensors import stalled_backfill_sensor
from ledger_backfill_dagster.defs.operations.status import backfill_status, no_stalled_backfills
from ledger_backfill_dagster.resources.alerts import alert_hook_from_env
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import BackfillSettings
from ledger_backfill_dagster.resources.source_connection import OutboxEndpoint


def ledger_database() -> LedgerDatabase:
    # The URL stays an EnvVar reference: Dagster resolves it in the run and never stores or shows
    # its value. Only whether it is set is read here, to fall back to the embedded server.
    if os.environ.get("DATABASE_URL"):
        return LedgerDatabase(database_url=dg.EnvVar("DATABASE_URL"))
    return LedgerDatabase()


defs = dg.Definitions(
    assets=[
        extracted_source,
        transformed_entries,
        validated_entries,
        posted_batches,
        reconciliation_report,
        backfill_status,  # operations: recorded by stalled_backfill_sensor, not computed by runs
    ],
    asset_checks=[no_stalled_backfills, *LEDGER_CHECKS, *DUAL_LEDGER_CHECKS],
    jobs=[ledger_backfill_job, *MAINTENANCE_JOBS, *DUAL_LEDGER_JOBS],
    schedules=SCHEDULES,  # all STOPPED by default
    sensors=[stalled_backfill_sensor],
    resources={
        "settings": BackfillSettings.from_env(),
        "ledger_db": ledger_database(),
        "stall_alerts": alert_hook_from_env(),
        "outbox_endpoint": OutboxEndpoint.from_env(),  # OUTBOX_RELAY_URL / _TOKEN as EnvVars
    },
    # Stages of one run run in order in one process: no per-step process start-up, and
    # partitions run in parallel through PARALLEL_WORKERS or concurrent runs instead. Dagster's
    # in-process executor, whose wait for a `ledger_pg` slot can be stopped and frees the slots
    # of runs whose process is gone (run_executor.py).
    executor=ledger_in_process_executor,
)
