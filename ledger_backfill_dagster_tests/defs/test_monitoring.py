"""Watching a backfill: per-partition metadata, `ledger-backfill status`, the stalled sensor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster import cli
from ledger_backfill_dagster.definitions import build_definitions
from ledger_backfill_dagster.defs.operations.status import STALL_CHECK, STATUS_ASSET
from ledger_backfill_dagster.ledger.status import read_status
from ledger_backfill_dagster.resources.alerts import AlertHook, StallAlertHook
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import materialize_range, use_source_files
from ledger_backfill_dagster_tests.support.webhook import Webhook

STALE = """
INSERT INTO ledger_backfill_checkpoints
    (source_id, source_type, partition_key, status, total_to_process, total_processed,
     total_successful, started_at, last_checkpoint_at)
VALUES (%s, 'CSV', %s, 'IN_PROGRESS', 1000, 400, 400,
        NOW()::timestamp - make_interval(secs => %s + 60),
        NOW()::timestamp - make_interval(secs => %s))
"""


def add_checkpoint(conn: psycopg.Connection, partition: str, idle_seconds: int) -> None:
    conn.execute(STALE, ("/data/stuck.csv", partition, idle_seconds, idle_seconds))


@pytest.fixture
def small_backfill(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    data = generate(tmp_path / "data", entries=1500, days=3, accounts=20, start=date(2024, 1, 1))
    use_source_files(monkeypatch, data.entries_file, data.accounts_file, BATCH_SIZE="200")
    return data


def test_posted_batches_metadata_is_per_partition(
    small_backfill, database_url: str, capsys
) -> None:
    result = materialize_range("2024-01-01", "2024-01-03")
    assert result.success
    with psycopg.connect(database_url) as conn:
        per_day = dict(
            conn.execute(
                "SELECT backfill_partition, count(*) FROM ledger_entries GROUP BY 1"
            ).fetchall()
        )
    events = result.asset_materializations_for_node("posted_batches")
    assert sorted(e.partition for e in events) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert sum(per_day.values()) == 1500  # the run's total, which no partition may show
    for event in events:
        md = event.metadata
        assert md["posted"].value == per_day[event.partition]
        assert md["processed"].value == per_day[event.partition]
        assert md["dagster/row_count"].value == per_day[event.partition]
        assert md["batches"].value == -(-per_day[event.partition] // 200)
        assert md["entries_per_second"].value > 0
        assert md["mean_batch_ms"].value > 0
        assert md["mean_checkpoint_ms"].value > 0
        assert md["failed"].value == md["conflicts"].value == 0
        assert md["status"].value == "COMPLETED"
    # the run's table still lists every partition
    assert len(events[0].metadata["by_partition"].value.records) == 3

    # and `ledger-backfill status` reports the finished backfill: all COMPLETED, completion
    assert cli.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["by_status"] == {"COMPLETED": 3} and doc["stalled"] == []
    (completion,) = doc["completion"]
    assert completion["partitions_completed"] == 3
    assert completion["total_entries"] == completion["total_processed"] == 1500
    assert completion["earliest"].startswith("2024-01-01")
    assert completion["latest"].startswith("2024-01-03")


def test_status_shows_progress_and_flags_stalled(
    ledger_db: LedgerDatabase, conn: psycopg.Connection, backfill_env, monkeypatch, capsys
) -> None:
    assert cli.main(["status"]) == 0
    assert "no backfill" in capsys.readouterr().out

    add_checkpoint(conn, "2024-02-01", idle_seconds=30)  # running, fresh
    assert cli.main(["status", "--fail-on-stalled"]) == 0
    out = capsys.readouterr().out
    assert "2024-02-01  IN_PROGRESS" in out and "400/1000 processed" in out
    assert "entries/s" in out and "ETA" in out and "STALLED" not in out

    add_checkpoint(conn, "2024-02-02", idle_seconds=2 * 3600)  # no checkpoint for 2 hours
    assert cli.main(["status"]) == 0
    assert cli.main(["status", "--fail-on-stalled"]) == 1
    out = capsys.readouterr().out
    stalled_lines = [line for line in out.splitlines() if "STALLED" in line]
    assert any("2024-02-02" in line for line in stalled_lines)
    assert not any("2024-02-01  IN_PROGRESS" in line for line in stalled_lines)

    assert cli.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stall_threshold_seconds"] == 3600
    assert [r["partition_key"] for r in doc["stalled"]] == ["2024-02-02"]
    assert doc["by_status"] == {"IN_PROGRESS": 2}
    running = {r["partition_key"]: r for r in doc["checkpoints"]}
    assert running["2024-02-01"]["eta_seconds"] is not None
    assert doc["completion"][0]["partitions"] == 2

    # the threshold is configurable: STALL_THRESHOLD_SECONDS, or --stall-seconds
    monkeypatch.setenv("STALL_THRESHOLD_SECONDS", "10")
    assert cli.main(["status", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["stalled"]) == 2
    assert cli.main(["status", "--json", "--stall-seconds", "99999"]) == 0
    assert json.loads(capsys.readouterr().out)["stalled"] == []


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def _evaluate(ledger_db, hook_url, cursor=None, instance=None, alert_url=None):
    """One tick of the code location's sensor, on this database and webhooks (the stall hook's,
    and ALERT_WEBHOOK_URL's)."""
    resources = {
        "ledger_db": ledger_db,
        "stall_alerts": StallAlertHook(webhook_url=hook_url),
        "alerts": AlertHook(webhook_url=alert_url),
        "monitoring": MonitoringSettings(),  # the default threshold: 3600 s
    }
    sensor = build_definitions(resources).get_unresolved_sensor_def("stalled_backfill_sensor")
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources=resources)
    return sensor(context), context


def _check_events(result) -> list[dg.AssetCheckEvaluation]:
    return [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]


def _status_events(result) -> list[dg.AssetMaterialization]:
    return [e for e in result.asset_events if isinstance(e, dg.AssetMaterialization)]


def test_stalled_sensor_alerts_once_then_clears(
    ledger_db: LedgerDatabase, conn: psycopg.Connection, webhook: Webhook
) -> None:
    with dg.instance_for_test() as instance:
        # nothing stalled: the status table and a passing check are recorded
        result, ctx = _evaluate(ledger_db, webhook.url, instance=instance)
        assert isinstance(result, dg.SensorResult)
        (check,) = _check_events(result)
        assert check.passed and check.check_name == STALL_CHECK
        assert _status_events(result)[0].asset_key == STATUS_ASSET
        assert webhook.received == []
        cursor = result.cursor

        # unchanged: nothing recorded, no alert
        result, _ = _evaluate(ledger_db, webhook.url, cursor, instance)
        assert isinstance(result, dg.SkipReason)

        # one partition running, one stalled for two hours
        add_checkpoint(conn, "2024-03-01", idle_seconds=20)
        add_checkpoint(conn, "2024-03-02", idle_seconds=2 * 3600)
        result, _ = _evaluate(ledger_db, webhook.url, cursor, instance)
        (check,) = _check_events(result)
        assert not check.passed
        assert check.severity == dg.AssetCheckSeverity.ERROR
        assert "2024-03-02" in check.description and "2024-03-01" not in check.description
        assert check.metadata["stalled_partitions"].value == 1
        (status,) = _status_events(result)
        assert status.metadata["partitions_stalled"].value == 1
        assert status.metadata["partitions_in_progress"].value == 2
        rows = status.metadata["not_completed"].value.records
        assert {r.data["partition_key"] for r in rows} == {"2024-03-01", "2024-03-02"}
        assert len(webhook.received) == 1
        assert "2024-03-02" in webhook.received[0]["text"]
        cursor = result.cursor

        # still stalled, nothing moved: no second alert
        result, _ = _evaluate(ledger_db, webhook.url, cursor, instance)
        assert isinstance(result, dg.SkipReason)
        assert len(webhook.received) == 1

        # the stalled partition resumes: the check passes again, no new alert
        conn.execute(
            "UPDATE ledger_backfill_checkpoints SET last_checkpoint_at = NOW()::timestamp,"
            " total_processed = 500 WHERE partition_key = '2024-03-02'"
        )
        result, _ = _evaluate(ledger_db, webhook.url, cursor, instance)
        (check,) = _check_events(result)
        assert check.passed
        assert len(webhook.received) == 1


def test_a_stall_also_goes_to_alert_webhook_url_once(
    ledger_db: LedgerDatabase, conn: psycopg.Connection, webhook: Webhook
) -> None:
    add_checkpoint(conn, "2024-05-01", idle_seconds=3 * 3600)
    other = Webhook()
    try:
        _evaluate(ledger_db, webhook.url, alert_url=other.url)
        assert len(webhook.received) == 1 and len(other.received) == 1
        assert "2024-05-01" in other.received[0]["text"]
        # the same URL in both settings: one message, not two
        _evaluate(ledger_db, other.url, alert_url=other.url)
        assert len(other.received) == 2
        # only ALERT_WEBHOOK_URL set
        _evaluate(ledger_db, None, alert_url=other.url)
        assert len(other.received) == 3
    finally:
        other.close()


def test_alert_hook_off_by_default_and_failures_hide_the_url(
    ledger_db: LedgerDatabase, conn: psycopg.Connection
) -> None:
    add_checkpoint(conn, "2024-04-01", idle_seconds=5 * 3600)
    # no webhook configured: the UI check still fails, nothing is sent anywhere
    result, _ = _evaluate(ledger_db, None)
    assert not _check_events(result)[0].passed
    assert not StallAlertHook().enabled

    # a webhook that refuses: logged without the URL's token, retried next tick
    hook = Webhook(status=500)
    try:
        result, ctx = _evaluate(ledger_db, hook.url)
        assert len(hook.received) == 1
        assert json.loads(result.cursor)["alerted"] == []
        result, _ = _evaluate(ledger_db, hook.url, result.cursor)
        assert len(hook.received) == 2
    finally:
        hook.close()
    with pytest.raises(Exception) as failure:
        StallAlertHook(webhook_url=hook.url.replace("127.0.0.1", "127.0.0.1:1")).send("x")
    assert "secret-token-xyz" not in str(failure.value)


def test_no_stalled_backfills_check_runs_on_demand(
    ledger_db: LedgerDatabase, conn: psycopg.Connection
) -> None:
    from ledger_backfill_dagster.defs.operations.status import no_stalled_backfills

    check_only = dg.define_asset_job(
        "stall_check", selection=dg.AssetSelection.checks(no_stalled_backfills)
    )
    job = build_definitions(
        {"ledger_db": ledger_db, "monitoring": MonitoringSettings()}, jobs=[check_only]
    ).resolve_job_def("stall_check")
    ok = job.execute_in_process()
    (evaluation,) = ok.get_asset_check_evaluations()
    assert evaluation.passed
    add_checkpoint(conn, "2024-05-01", idle_seconds=4000)
    failed = job.execute_in_process()
    (evaluation,) = failed.get_asset_check_evaluations()
    assert not evaluation.passed
    assert read_status(conn, 3600).stalled[0]["partition_key"] == "2024-05-01"
