"""The alert sensor: one webhook message (ALERT_WEBHOOK_URL) for every failure a person must act
on, and never two for the same failure.

`ledger_alert_sensor` runs in the daemon (on by default, every STALL_SENSOR_INTERVAL_SECONDS).
Each tick looks at what changed since the last one:
- **runs** of this code location's jobs that ended FAILURE or CANCELED: one message per run,
  with its partitions and the errors of its failed steps;
- **checks** (severity ERROR) whose latest evaluation for a partition failed: one message per
  check and tick, naming the partitions newly failing; a (check, partition) pair is announced
  again only after it passed in between (`no_stalled_backfills` is the stall alert's own);
- **the outbox**: rows a relay marked FAILED (announced again only for rows newer than the last
  announced), and backfilled entries without an outbox row (a dual-ledger gap), while there
  are any.
Stalled partitions are announced by `stalled_backfill_sensor`, which also posts to this webhook.
The cursor holds what was announced. A message the webhook refused is tried again next tick;
the first tick only notes where history ends, so enabling the sensor replays nothing. Messages
are redacted: no connection string, token or webhook URL reaches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)
from dagster._utils.error import SerializableErrorInfo

from ledger_backfill_dagster.defs.operations.schedules import ENDED_BADLY
from ledger_backfill_dagster.defs.operations.status import STALL_CHECK
from ledger_backfill_dagster.ledger.health import LedgerHealth, read_health
from ledger_backfill_dagster.ledger.status import schema_missing
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.resources.alerts import AlertDeliveryError, AlertHook, safe_error
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

SENSOR_NAME = "ledger_alert_sensor"
MAX_NAMED = 20  # partitions or errors named in one message; the rest are counted
MAX_TEXT = 400  # characters of one error message quoted
REMEMBERED_RUNS = 1_000  # run ids kept to never announce a run twice
PAGE = 500  # check executions read per query


@dataclass
class AlertCursor:
    """What was announced; JSON in the sensor's cursor."""

    runs_after: float = 0.0  # update time of the newest ended run looked at
    announced_runs: list[str] = field(default_factory=list)
    pending_runs: list[str] = field(default_factory=list)  # refused by the webhook: again
    checks_seen: dict[str, int] = field(default_factory=dict)  # check → newest execution id
    failing: list[str] = field(default_factory=list)  # "check|partition" announced, not passed
    outbox_failed_after: int = 0  # FAILED outbox rows up to this id were announced
    gap_announced: bool = False

    @classmethod
    def load(cls, raw: str | None) -> AlertCursor | None:
        try:
            return cls(**json.loads(raw)) if raw else None
        except (ValueError, TypeError):
            return None

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def build_alert_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    return dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Posts to ALERT_WEBHOOK_URL, once per failure: runs FAILED or CANCELED, checks "
            "failed with severity ERROR (per partition, again only after they passed), outbox "
            "rows FAILED, backfilled entries without an outbox row. Stalls: "
            "stalled_backfill_sensor. Unset: the messages are logged on the tick only."
        ),
    )(alert_tick)


def alert_tick(
    context: dg.SensorEvaluationContext,
    ledger_db: LedgerDatabase,
    alerts: AlertHook,
) -> dg.SkipReason:
    """One tick, as the module's docstring says; the cursor is updated, nothing is launched."""
    cursor = AlertCursor.load(context.cursor)
    if cursor is None:
        context.update_cursor(_starting_point(context).dump())
        return dg.SkipReason("alert sensor started: failures from now on are announced")
    sent = refused = 0
    for text, on_delivered in [
        *_run_alerts(context, cursor),
        *_check_alerts(context, cursor),
        *_ledger_alerts(context, ledger_db, cursor),
    ]:
        context.log.error(text)
        try:
            alerts.send(text)
        except AlertDeliveryError as exc:
            refused += 1
            context.log.error(f"alert not delivered (tried again next tick): {exc}")
            continue
        on_delivered()
        sent += 1
    context.update_cursor(cursor.dump())
    destination = "the webhook" if alerts.enabled else "the log (ALERT_WEBHOOK_URL unset)"
    return dg.SkipReason(f"{sent} alert(s) sent to {destination}, {refused} refused")


# -- where history ends when the sensor starts -----------------------------------------------------
def _starting_point(context: dg.SensorEvaluationContext) -> AlertCursor:
    cursor = AlertCursor(runs_after=datetime.now(UTC).timestamp())
    storage = context.instance.event_log_storage
    for key in _check_keys(context):
        newest = storage.get_asset_check_execution_history(key, limit=1)
        cursor.checks_seen[key.to_user_string()] = newest[0].id if newest else 0
    return cursor


# -- runs ----------------------------------------------------------------------------------------
Alert = tuple[str, Any]  # (message, what to remember once it was delivered)


def _run_alerts(context: dg.SensorEvaluationContext, cursor: AlertCursor) -> list[Alert]:
    instance = context.instance
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=sorted(ENDED_BADLY, key=lambda status: status.value),
            updated_after=datetime.fromtimestamp(cursor.runs_after, UTC),
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=200,
    )
    waiting = list(cursor.pending_runs)
    for record in records:
        cursor.runs_after = max(cursor.runs_after, record.update_timestamp.timestamp())
        run = record.dagster_run
        if run.run_id in cursor.announced_runs or run.run_id in waiting:
            continue
        if context.repository_def is not None and not context.repository_def.has_job(run.job_name):
            continue  # another code location's run
        waiting.append(run.run_id)
    cursor.pending_runs = []
    alerts: list[Alert] = []
    for run_id in waiting:
        found = instance.get_run_by_id(run_id)
        if found is None:
            continue
        cursor.pending_runs.append(run_id)
        alerts.append((_run_text(instance, found), partial(_run_announced, cursor, run_id)))
    return alerts


def _run_announced(cursor: AlertCursor, run_id: str) -> None:
    cursor.pending_runs.remove(run_id)
    cursor.announced_runs = [*cursor.announced_runs, run_id][-REMEMBERED_RUNS:]


def _run_text(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    state = "was CANCELED" if run.status == dg.DagsterRunStatus.CANCELED else "FAILED"
    tags = run.tags
    if "dagster/partition" in tags:
        scope = f" for partition {tags['dagster/partition']}"
    elif "dagster/asset_partition_range_start" in tags:
        scope = (
            f" for partitions {tags['dagster/asset_partition_range_start']}.."
            f"{tags.get('dagster/asset_partition_range_end', '')}"
        )
    else:
        scope = ""
    errors = []
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if event is not None and error is not None:
            errors.append(f"{event.step_key}: {_innermost(error)[:MAX_TEXT]}")
    if not errors:  # failed outside a step (launch, a lost process) or canceled
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            if record.dagster_event and record.dagster_event.message:
                errors.append(record.dagster_event.message[:MAX_TEXT])
    shown = "; ".join(errors[:MAX_NAMED]) or "no error recorded (see the run's logs)"
    return redact(
        f":rotating_light: ledger backfill run {run.run_id} of job {run.job_name} {state}"
        f"{scope}. {shown}. Open the run in the Dagster UI; docs/operations.md, 'Alerts'."
    )


def _innermost(error: SerializableErrorInfo) -> str:
    """What the step itself raised: Dagster wraps it ("Error occurred while executing op ...")
    and keeps it as the cause."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return f"{error.cls_name}: {error.message.strip()}"


# -- checks --------------------------------------------------------------------------------------
def _check_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetCheckKey]:
    if context.repository_def is None:
        return []
    return sorted(
        (k for k in context.repository_def.asset_graph.asset_check_keys if k.name != STALL_CHECK),
        key=lambda k: k.to_user_string(),
    )


def _new_executions(
    context: dg.SensorEvaluationContext, key: dg.AssetCheckKey, after: int
) -> list[AssetCheckExecutionRecord]:
    """The check's executions newer than `after`, oldest first."""
    storage = context.instance.event_log_storage
    found: list[AssetCheckExecutionRecord] = []
    page_cursor = None
    while True:
        page = storage.get_asset_check_execution_history(key, limit=PAGE, cursor=page_cursor)
        newer = [r for r in page if r.id > after]
        found.extend(newer)
        if len(page) < PAGE or len(newer) < len(page):
            return sorted(found, key=lambda r: r.id)
        page_cursor = page[-1].id


def _check_alerts(context: dg.SensorEvaluationContext, cursor: AlertCursor) -> list[Alert]:
    alerts: list[Alert] = []
    for key in _check_keys(context):
        name = key.to_user_string()
        failing = set(cursor.failing)
        newly: dict[str, str] = {}  # pair → description
        newest = cursor.checks_seen.get(name, 0)
        for record in _new_executions(context, key, newest):
            newest = record.id
            pair = f"{name}|{record.partition or ''}"
            if record.status == AssetCheckExecutionRecordStatus.SUCCEEDED:
                failing.discard(pair)  # recovered: a new failure is news again
                newly.pop(pair, None)
            elif record.status == AssetCheckExecutionRecordStatus.FAILED:
                evaluation = _evaluation(record)
                if evaluation is None or evaluation.severity != dg.AssetCheckSeverity.ERROR:
                    continue
                if pair not in failing:
                    newly[pair] = (evaluation.description or "").strip()
        cursor.failing = sorted(failing)
        if not newly:
            cursor.checks_seen[name] = newest
            continue

        # Only once delivered are these executions seen: a refused message is built again.
        delivered = partial(_checks_announced, cursor, name, newest, list(newly))
        alerts.append((_check_text(name, newly), delivered))
    return alerts


def _checks_announced(cursor: AlertCursor, name: str, newest: int, pairs: list[str]) -> None:
    cursor.checks_seen[name] = newest
    cursor.failing = sorted(set(cursor.failing) | set(pairs))


def _evaluation(record: AssetCheckExecutionRecord) -> dg.AssetCheckEvaluation | None:
    event = record.event.dagster_event if record.event else None
    data = event.event_specific_data if event else None
    return data if isinstance(data, dg.AssetCheckEvaluation) else None


def _check_text(name: str, newly: dict[str, str]) -> str:
    partitions = [pair.split("|", 1)[1] or "(unpartitioned)" for pair in newly]
    more = f" and {len(partitions) - MAX_NAMED} more" if len(partitions) > MAX_NAMED else ""
    description = next(iter(newly.values()))[:MAX_TEXT]
    return redact(
        f":rotating_light: check {name} FAILED (severity ERROR) for "
        f"{', '.join(partitions[:MAX_NAMED])}{more}: {description}. "
        "Its downstream must not be trusted until it passes; docs/operations.md, 'Alerts'."
    )


# -- the ledger: outbox rows FAILED, entries without an outbox row ---------------------------------
def _ledger_alerts(
    context: dg.SensorEvaluationContext, ledger_db: LedgerDatabase, cursor: AlertCursor
) -> list[Alert]:
    try:
        with ledger_db.connection() as conn:
            health = read_health(conn)
    except Exception as exc:
        if not schema_missing(exc):
            context.log.warning(f"could not read the ledger: {safe_error(exc)}")
        return []
    return [*_outbox_failed(health, cursor), *_outbox_gap(health, cursor)]


def _outbox_failed(health: LedgerHealth, cursor: AlertCursor) -> list[Alert]:
    if health.outbox_failed == 0:
        cursor.outbox_failed_after = 0  # all retried or resolved: the next failure is news
        return []
    if health.outbox_failed_last_id <= cursor.outbox_failed_after:
        return []

    def delivered() -> None:
        cursor.outbox_failed_after = health.outbox_failed_last_id

    text = (
        f":rotating_light: dual-ledger outbox: {health.outbox_failed} row(s) FAILED (newest id "
        f"{health.outbox_failed_last_id}); the other ledger has not received those entries. "
        "See `ledger-backfill status` and the outbox_relay_job's runs; docs/operations.md, "
        "'Alerts'."
    )
    return [(text, delivered)]


def _outbox_gap(health: LedgerHealth, cursor: AlertCursor) -> list[Alert]:
    if health.entries_without_outbox == 0:
        cursor.gap_announced = False
        return []
    if cursor.gap_announced:
        return []

    def delivered() -> None:
        cursor.gap_announced = True

    text = (
        f":rotating_light: dual-ledger gap: {health.entries_without_outbox} backfilled "
        "entr(ies) have no outbox row, so the other ledger will never hear of them. Run the "
        "dual_ledger_consistency check to list them; docs/operations.md, 'Alerts'."
    )
    return [(text, delivered)]
