"""Sensors: the stalled-backfill alert, and the status table it keeps current in the UI.

`stalled_backfill_sensor` runs in the daemon (on by default, every STALL_SENSOR_INTERVAL_SECONDS,
default 60: `monitoring.stall_sensor_interval_seconds`, part of the sensor's definition, so
definitions.py builds the sensor with `build_stalled_backfill_sensor` when the code location
loads). Each tick reads the checkpoints once and, without launching a run:
- records a `backfill_status` materialization with the status table whenever a checkpoint moved
  or changed state, so the asset's page always shows the current progress;
- records a result of the `no_stalled_backfills` check whenever the set of stalled partitions
  changes: failed (severity ERROR) while any partition is stalled, passed once none is;
- for partitions newly stalled, logs an error on the tick and posts one message to each alert
  webhook configured (STALL_ALERT_WEBHOOK_URL, ALERT_WEBHOOK_URL; both off by default; one
  message if both name the same URL).
The cursor remembers what was recorded and alerted, so a stall is announced once, not every tick.
"""

from __future__ import annotations

import json

import dagster as dg

from ledger_backfill_dagster.defs.operations.status import (
    STALL_CHECK,
    STATUS_ASSET,
    stall_check_metadata,
    stall_description,
    status_metadata,
)
from ledger_backfill_dagster.ledger.status import alert_text, read_status, schema_missing
from ledger_backfill_dagster.resources.alerts import (
    AlertDeliveryError,
    AlertHook,
    StallAlertHook,
    safe_error,
)
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings


def _cursor(raw: str | None) -> dict:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _hooks(stall_alerts: StallAlertHook, alerts: AlertHook) -> list[StallAlertHook]:
    """The configured webhooks a stall goes to, each URL once."""
    if alerts.webhook_url and alerts.webhook_url != stall_alerts.webhook_url:
        return [stall_alerts, alerts]
    return [stall_alerts]


def build_stalled_backfill_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    """The sensor, ticking every `minimum_interval_seconds` (monitoring's interval)."""
    return dg.sensor(
        name="stalled_backfill_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Alerts when a backfill checkpoint stays IN_PROGRESS without progress for longer "
            "than STALL_THRESHOLD_SECONDS (default 3600): fails the no_stalled_backfills check "
            "on backfill_status, logs an error, and posts to STALL_ALERT_WEBHOOK_URL and "
            "ALERT_WEBHOOK_URL if set. "
            "Also keeps the backfill_status table current."
        ),
    )(stalled_backfill_tick)


def stalled_backfill_tick(
    context: dg.SensorEvaluationContext,
    ledger_db: LedgerDatabase,
    stall_alerts: StallAlertHook,
    monitoring: MonitoringSettings,
    alerts: AlertHook,
) -> dg.SensorResult | dg.SkipReason:
    """One tick: record the status, check and alert as the module's docstring says."""
    try:
        with ledger_db.connection() as conn:
            status = read_status(conn, monitoring.stall_threshold_seconds)
    except Exception as exc:
        if schema_missing(exc):
            return dg.SkipReason("no backfill has run yet (the ledger schema does not exist)")
        # Say why without the connection string; the next tick tries again.
        return dg.SkipReason(f"could not read the checkpoints: {safe_error(exc)}")

    previous = _cursor(context.cursor)
    stalled_now = status.stalled_keys()
    fingerprint = status.fingerprint()
    events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = []

    if fingerprint != previous.get("fingerprint"):
        events.append(
            dg.AssetMaterialization(asset_key=STATUS_ASSET, metadata=status_metadata(status))
        )
    if stalled_now != previous.get("checked"):
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=STATUS_ASSET,
                check_name=STALL_CHECK,
                passed=not stalled_now,
                severity=dg.AssetCheckSeverity.ERROR,
                description=stall_description(status),
                metadata=stall_check_metadata(status),
            )
        )

    alerted = [k for k in previous.get("alerted", []) if k in stalled_now]
    if set(stalled_now) - set(alerted):
        context.log.error(alert_text(status))
        try:
            for hook in _hooks(stall_alerts, alerts):
                if hook.send(alert_text(status)):
                    context.log.info("stall alert sent to a configured webhook")
            alerted = stalled_now
        except AlertDeliveryError as exc:
            # Not marked alerted: the next tick tries the webhook again.
            context.log.error(f"stall alert not delivered: {exc}")

    cursor = json.dumps({"fingerprint": fingerprint, "checked": stalled_now, "alerted": alerted})
    if not events and cursor == context.cursor:
        return dg.SkipReason(
            f"{len(status.running)} partition(s) running, {len(stalled_now)} stalled; no change"
        )
    return dg.SensorResult(asset_events=events, cursor=cursor)
