"""The alert sensor (ALERT_WEBHOOK_URL): every failure a person must act on reaches a real local
webhook once, never twice, with no secret; a refused message is tried again. Runs are real runs
of a real Dagster instance, check results real events in its storage, the outbox a real
PostgreSQL table."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.definitions import build_definitions
from ledger_backfill_dagster.defs.operations.alerts import SENSOR_NAME
from ledger_backfill_dagster.resources.alerts import AlertHook, StallAlertHook
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings
from ledger_backfill_dagster_tests.support.webhook import Webhook

SECRET = "s3cr3t-pw"  # in a failing step's error: must never reach a message


@dg.op
def breaks() -> None:
    raise RuntimeError(f"could not connect to postgresql://app:{SECRET}@db.internal:5432/ledger")


@dg.job
def failing_job() -> None:
    breaks()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


class Ticks:
    """The code location's alert sensor, ticked by hand on one instance, database and webhook."""

    def __init__(self, instance: dg.DagsterInstance, ledger_db: LedgerDatabase, url: str) -> None:
        self.instance = instance
        self.resources = {
            "ledger_db": ledger_db,
            "alerts": AlertHook(webhook_url=url),
            "stall_alerts": StallAlertHook(),
            "monitoring": MonitoringSettings(),
        }
        self.defs = build_definitions(self.resources, jobs=[failing_job])
        self.cursor: str | None = None

    def tick(self) -> dg.SkipReason:
        sensor = self.defs.get_sensor_def(SENSOR_NAME)
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources=self.resources,
            repository_def=self.defs.get_repository_def(),
        )
        result = sensor(context)
        self.cursor = context.cursor
        return result


def _texts(hook: Webhook) -> list[str]:
    return [m["text"] for m in hook.received]


def _check_failed(instance: dg.DagsterInstance, check: str, partition: str, passed: bool) -> None:
    """A check's result as a run records it: an ASSET_CHECK_EVALUATION event of that run."""
    run = instance.create_run_for_job(failing_job)
    evaluation = dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("reconciliation_report"),
        check_name=check,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"USD debits 10.00 differ from credits 9.00 on {partition}",
        partition=partition,
    )
    instance.report_dagster_event(
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.ASSET_CHECK_EVALUATION.value,
            job_name=run.job_name,
            event_specific_data=evaluation,
        ),
        run_id=run.run_id,
    )


def test_a_failed_and_a_canceled_run_are_announced_once_without_secrets(
    ledger_db: LedgerDatabase, webhook: Webhook
) -> None:
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, ledger_db, webhook.url)
        old = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not old.success
        ticks.tick()  # the first tick notes where history ends: the old failure is not replayed
        assert webhook.received == []

        failed = failing_job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"dagster/partition": "2024-01-02"}
        )
        canceled = instance.create_run_for_job(failing_job)
        instance.report_run_canceled(canceled)
        ticks.tick()
        texts = _texts(webhook)
        assert len(texts) == 2
        (failure,) = [t for t in texts if failed.run_id in t]
        assert "FAILED" in failure and "2024-01-02" in failure and "breaks" in failure
        assert "could not connect" in failure
        (cancel,) = [t for t in texts if canceled.run_id in t]
        assert "CANCELED" in cancel
        assert old.run_id not in " ".join(texts)
        for text in texts:
            assert SECRET not in text
            assert "secret-token-xyz" not in text  # the webhook's own credential

        ticks.tick()  # nothing new: nothing sent
        assert len(webhook.received) == 2


def test_a_refused_alert_is_sent_again_on_the_next_tick(ledger_db: LedgerDatabase) -> None:
    refusing = Webhook(status=503)
    try:
        with dg.instance_for_test() as instance:
            ticks = Ticks(instance, ledger_db, refusing.url)
            ticks.tick()
            run = failing_job.execute_in_process(instance=instance, raise_on_error=False)
            ticks.tick()
            assert len(refusing.received) == 1
            ticks.tick()  # refused: the same run again
            assert len(refusing.received) == 2
            refusing.status = 200
            ticks.tick()  # accepted now
            ticks.tick()  # and then never again
            assert len(refusing.received) == 3
            assert all(run.run_id in t for t in _texts(refusing))
    finally:
        refusing.close()


def test_a_failed_check_is_announced_once_per_partition_until_it_passes(
    ledger_db: LedgerDatabase, webhook: Webhook
) -> None:
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, ledger_db, webhook.url)
        ticks.tick()
        _check_failed(instance, "debits_equal_credits", "2024-01-01", passed=False)
        _check_failed(instance, "debits_equal_credits", "2024-01-02", passed=False)
        ticks.tick()
        (text,) = _texts(webhook)
        assert "reconciliation_report:debits_equal_credits" in text
        assert "2024-01-01" in text and "2024-01-02" in text

        # failing again without having passed: no second alert
        _check_failed(instance, "debits_equal_credits", "2024-01-01", passed=False)
        ticks.tick()
        assert len(webhook.received) == 1

        # 2024-01-01 recovers, then fails again: announced again, 2024-01-02 not
        _check_failed(instance, "debits_equal_credits", "2024-01-01", passed=True)
        ticks.tick()
        assert len(webhook.received) == 1
        _check_failed(instance, "debits_equal_credits", "2024-01-01", passed=False)
        _check_failed(instance, "debits_equal_credits", "2024-01-02", passed=False)
        ticks.tick()
        assert len(webhook.received) == 2
        assert "2024-01-01" in _texts(webhook)[1] and "2024-01-02" not in _texts(webhook)[1]


ENTRY = (
    "INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id, amount,"
    " currency_code, credit_amount, credit_currency_code, asset_type, transaction_type,"
    " reference_id, timestamp_utc, backfill_source_id, content_fingerprint)"
    " VALUES ('MASTER', 'A', 'B', 1, 'USD', 1, 'USD', 'fiat', 'T', %s, now(), 'src', 'x')"
    " RETURNING id"
)
OUTBOX = (
    "INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id, status)"
    " VALUES (%s, 'MASTER', %s, %s)"
)


def _entry(conn: psycopg.Connection, reference: str, outbox_status: str | None) -> None:
    (entry_id,) = conn.execute(ENTRY, (reference,)).fetchone()
    if outbox_status:
        conn.execute(OUTBOX, (entry_id, reference, outbox_status))


def test_outbox_failures_and_gaps_are_announced_once_while_they_last(
    ledger_db: LedgerDatabase, conn: psycopg.Connection, webhook: Webhook
) -> None:
    with dg.instance_for_test() as instance:
        ticks = Ticks(instance, ledger_db, webhook.url)
        ticks.tick()
        _entry(conn, "R1", "SENT")
        ticks.tick()
        assert webhook.received == []  # a healthy ledger says nothing

        _entry(conn, "R2", "FAILED")
        _entry(conn, "R3", None)  # an entry whose outbox row is missing
        ticks.tick()
        texts = _texts(webhook)
        assert len(texts) == 2
        assert any("1 row(s) FAILED" in t for t in texts)
        assert any("dual-ledger gap: 1 backfilled" in t for t in texts)
        ticks.tick()
        assert len(webhook.received) == 2  # unchanged: not again

        _entry(conn, "R4", "FAILED")  # a new failure: news
        ticks.tick()
        assert len(webhook.received) == 3 and "2 row(s) FAILED" in _texts(webhook)[2]

        # resolved (retried, the gap filled), then failing again: announced again
        conn.execute("UPDATE dual_ledger_outbox SET status = 'SENT'")
        conn.execute(
            "INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)"
            " SELECT id, ledger_id, reference_id FROM ledger_entries e WHERE NOT EXISTS"
            " (SELECT 1 FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id)"
        )
        ticks.tick()
        assert len(webhook.received) == 3
        _entry(conn, "R5", None)
        ticks.tick()
        assert len(webhook.received) == 4 and "dual-ledger gap" in _texts(webhook)[3]
