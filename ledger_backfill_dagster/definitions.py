"""The code location: every asset, check, job, schedule, sensor and resource, built by one function.

`defs = build_definitions()` is what `dagster dev -w workspace.yaml`, `dagster ... -m
ledger_backfill_dagster.definitions` and `ledger_backfill_dagster.definitions:defs` load. Tests
build the same code location with some resources replaced (a literal database URL, settings
given as values) and jobs of their own added, instead of assembling a Definitions of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from ledger_backfill_dagster.defs.backfill.checks import LEDGER_CHECKS
from ledger_backfill_dagster.defs.backfill.extract import extracted_source
from ledger_backfill_dagster.defs.backfill.guards import GUARD_CHECKS
from ledger_backfill_dagster.defs.backfill.jobs import ledger_backfill_job
from ledger_backfill_dagster.defs.backfill.post import posted_batches
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.defs.backfill.transform import transformed_entries
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.defs.dual_ledger.sync import DUAL_LEDGER_CHECKS, DUAL_LEDGER_JOBS
from ledger_backfill_dagster.defs.execution.executor import ledger_in_process_executor
from ledger_backfill_dagster.defs.maintenance.jobs import MAINTENANCE_JOBS
from ledger_backfill_dagster.defs.operations.alerts import build_alert_sensor
from ledger_backfill_dagster.defs.operations.catch_up import build_catch_up_sensor
from ledger_backfill_dagster.defs.operations.schedules import build_schedules
from ledger_backfill_dagster.defs.operations.sensors import build_stalled_backfill_sensor
from ledger_backfill_dagster.defs.operations.status import backfill_status, no_stalled_backfills
from ledger_backfill_dagster.lib.redaction import check_secret_settings
from ledger_backfill_dagster.resources.alerts import AlertHook, StallAlertHook
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import (
    MonitoringSettings,
    PostingSettings,
    SourceSettings,
    TransformSettings,
)
from ledger_backfill_dagster.resources.source_connection import OutboxEndpoint

if TYPE_CHECKING:  # what dg.define_asset_job returns (not exported by dagster itself)
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )


def ledger_database() -> LedgerDatabase:
    # The URL stays an EnvVar reference: Dagster resolves it in the run and never stores or shows
    # its value. Only whether it is set is read here, to fall back to the embedded server.
    if os.environ.get("DATABASE_URL"):
        return LedgerDatabase(database_url=dg.EnvVar("DATABASE_URL"))
    return LedgerDatabase()


# Each resource key and how the code location builds it from the environment. The settings are
# split by concern (resources/settings.py); secrets reach their resources as EnvVars.
RESOURCES_FROM_ENV: dict[str, Callable[[], Any]] = {
    "source": SourceSettings.from_env,
    "transform": TransformSettings.from_env,
    "posting": PostingSettings.from_env,
    "monitoring": MonitoringSettings.from_env,
    "ledger_db": ledger_database,
    "stall_alerts": StallAlertHook.from_env,
    "alerts": AlertHook.from_env,  # ALERT_WEBHOOK_URL as an EnvVar
    "outbox_endpoint": OutboxEndpoint.from_env,  # OUTBOX_RELAY_URL / _TOKEN as EnvVars
}


def build_definitions(
    resources: Mapping[str, Any] | None = None,
    jobs: Sequence[dg.JobDefinition | UnresolvedAssetJobDefinition] = (),
) -> dg.Definitions:
    """The code location. `resources` replaces resources by key (the others are built from the
    environment); `jobs` are added to the code location's own (e.g. a test's selection, with
    its own executor).

    A malformed secret (a URL, a token) fails here, when the code location loads, showing nothing
    past its scheme; so does a setting out of its range, naming its variable.
    """
    check_secret_settings()
    given = dict(resources or {})
    unknown = sorted(given.keys() - RESOURCES_FROM_ENV.keys())
    if unknown:
        raise ValueError(f"no resource of the code location is called {unknown}")
    built = {
        key: given[key] if key in given else from_env()
        for key, from_env in RESOURCES_FROM_ENV.items()
    }
    monitoring: MonitoringSettings = built["monitoring"]
    return dg.Definitions(
        assets=[
            extracted_source,
            transformed_entries,
            validated_entries,
            posted_batches,
            reconciliation_report,
            # operations: recorded by stalled_backfill_sensor, not computed by runs
            backfill_status,
        ],
        asset_checks=[no_stalled_backfills, *LEDGER_CHECKS, *GUARD_CHECKS, *DUAL_LEDGER_CHECKS],
        jobs=[ledger_backfill_job, *MAINTENANCE_JOBS, *DUAL_LEDGER_JOBS, *jobs],
        schedules=build_schedules(),  # all STOPPED by default; cron and zone from the env
        # Its interval is part of its definition: monitoring's, as the code location loads.
        sensors=[
            build_stalled_backfill_sensor(monitoring.stall_sensor_interval_seconds),
            build_alert_sensor(monitoring.stall_sensor_interval_seconds),
            build_catch_up_sensor(),
        ],
        resources=built,
        # Stages of one run run in order in one process: no per-step process start-up, and
        # partitions run in parallel through PARALLEL_WORKERS or concurrent runs instead.
        # Dagster's in-process executor, whose wait for a `ledger_pg` slot can be stopped and
        # frees the slots of runs whose process is gone (defs/execution/executor.py).
        executor=ledger_in_process_executor,
    )


defs = build_definitions()
