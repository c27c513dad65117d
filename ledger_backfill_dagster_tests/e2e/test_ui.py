"""The UI end to end: the real `dagster dev` (webserver + daemon) on 127.0.0.1, a partition backfill
launched through GraphQL, and what a person then sees: per-partition materializations with their
metadata, the asset checks, the status table, and a stalled partition failing its check.

The ledger and Dagster's instance storage live in this test's database, reached as a login role
with a known password: nothing the webserver serves or prints may contain it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.cli import DAGSTER, REPO, dagster_home
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants
from ledger_backfill_dagster_tests.support.pg_roles import login_role, unique_prefix

SECRET = "Ui-e2e-S3cret-7f1c9a"
STAGES = [
    "extracted_source",
    "transformed_entries",
    "validated_entries",
    "posted_batches",
    "reconciliation_report",
]
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dagster:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.responses: list[str] = []  # every GraphQL answer, searched for the secret later

    def gql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=60,
        )
        response.raise_for_status()
        self.responses.append(response.text)
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_for(self, what: str, probe, timeout: float, every: float = 2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(every)
        tail = self.log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"timed out waiting for {what}; dagster dev log tail:\n{tail}")


@pytest.fixture
def secret_url(database_url: str, pg_admin_url: str) -> Iterator[str]:
    with login_role(
        database_url, pg_admin_url, f"{unique_prefix()}ui", SECRET, owns_database=True
    ) as url:
        yield url


@pytest.fixture
def dagster_dev(tmp_path: Path, secret_url: str) -> Iterator[Dagster]:
    with running_dagster_dev(tmp_path, secret_url, days=3, entries=1800) as dagster:
        yield dagster


@contextlib.contextmanager
def running_dagster_dev(
    tmp_path: Path,
    secret_url: str,
    days: int,
    entries: int,
    start: date = date(2024, 1, 1),
    **settings: str,
) -> Iterator[Dagster]:
    """The real `dagster dev` (webserver + daemon) on this test's database and a generated
    source of `entries` over `days` days from `start`, with further `settings`."""
    data = generate(tmp_path / "data", entries=entries, days=days, accounts=20, start=start)
    home = dagster_home(tmp_path)
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DAGSTER_PG_URL", "BACKFILL_SOURCE_ID", "REPORTS_DIR", "FORCE_REDO"}
    }
    env.update(
        DAGSTER_HOME=str(home),
        DATABASE_URL=secret_url,
        LEDGER_BACKFILL_HOME=str(tmp_path / "state"),
        BACKFILL_START_DATE="2024-01-01",
        BACKFILL_SOURCE_FILE=str(data.entries_file),
        ACCOUNTS_FILE=str(data.accounts_file),
        BATCH_SIZE="250",
        STALL_SENSOR_INTERVAL_SECONDS="3",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(DAGSTER),
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                "ledger_backfill_dagster.definitions",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dagster = Dagster(port, log)
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).is_success
            except httpx.HTTPError:
                return False

        dagster.wait_for("the webserver", up, timeout=180, every=1.0)
        dagster.pid = process.pid  # type: ignore[attr-defined]
        yield dagster
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the whole group (webserver, daemon, code servers), then SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 20) { runId status } }
  }
}"""
MATERIALIZATIONS = """
query($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 50) {
        partition runId
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on BoolMetadataEntry { boolValue }
          ... on TextMetadataEntry { text }
          ... on TableMetadataEntry { table { records } }
        }
      }
    }
  }
}"""
CHECKS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status evaluation { description } } }
        }
      }
    }
  }
}"""
CHECK_EXECUTIONS = """
query($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 5) {
    status evaluation { severity description }
  }
}"""
RUN = """
query($id: ID!) {
  runOrError(runId: $id) { ... on Run { runConfigYaml tags { key value } } }
  logsForRun(runId: $id, limit: 5000) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""
INSTANCE = "query { instance { info runLauncher { name } } }"
MATERIALIZATIONS_ALL = MATERIALIZATIONS.replace("limit: 50", "limit: 500")


def _metadata(materialization: dict) -> dict:
    values = {}
    for entry in materialization["metadataEntries"]:
        for field in ("intValue", "floatValue", "boolValue", "text", "table"):
            if field in entry:
                values[entry["label"]] = entry[field]
    return values


def test_partition_backfill_through_the_ui(dagster_dev: Dagster, database_url: str) -> None:
    # The webserver listens on loopback only.
    listening = {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == dagster_dev.port
    }
    assert listening == {"127.0.0.1"}

    started = time.monotonic()
    launched = dagster_dev.gql(
        LAUNCH,
        {
            "params": {
                "partitionNames": DAYS,
                "assetSelection": [{"path": [key]} for key in STAGES],
                "fromFailure": False,
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        backfill = dagster_dev.gql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        return backfill if backfill["status"] not in {"REQUESTED", "CANCELING"} else None

    backfill = dagster_dev.wait_for("the backfill", finished, timeout=420, every=3)
    elapsed = time.monotonic() - started
    assert backfill["status"] in {"COMPLETED_SUCCESS", "COMPLETED"}, backfill
    assert [r["status"] for r in backfill["runs"]] == ["SUCCESS"]  # one single-run backfill
    print(f"backfill of {len(DAYS)} partitions through the UI took {elapsed:.1f} s")

    # Every stage materialized every partition; posting metadata is per partition.
    with psycopg.connect(database_url) as conn:
        per_day = dict(
            conn.execute(
                "SELECT backfill_partition, count(*) FROM ledger_entries GROUP BY 1"
            ).fetchall()
        )
        assert_ledger_invariants(conn)
    assert sum(per_day.values()) == 1800
    for key in STAGES:
        found = dagster_dev.gql(MATERIALIZATIONS, {"key": {"path": [key]}})["assetOrError"]
        assert sorted(m["partition"] for m in found["assetMaterializations"]) == DAYS, key
    posted = dagster_dev.gql(MATERIALIZATIONS, {"key": {"path": ["posted_batches"]}})
    for materialization in posted["assetOrError"]["assetMaterializations"]:
        md = _metadata(materialization)
        assert md["posted"] == md["processed"] == per_day[materialization["partition"]]
        assert md["entries_per_second"] > 0 and md["mean_checkpoint_ms"] > 0
        assert md["batches"] == -(-per_day[materialization["partition"]] // 250)
    report = dagster_dev.gql(MATERIALIZATIONS, {"key": {"path": ["reconciliation_report"]}})
    assert all(_metadata(m)["reconciles"] for m in report["assetOrError"]["assetMaterializations"])

    # Asset checks on the backfill's assets, whichever exist, all pass.
    evaluated = {}
    for key in STAGES:
        node = dagster_dev.gql(CHECKS, {"key": {"path": [key]}})["assetNodeOrError"]
        for check in node["assetChecksOrError"].get("checks", []):
            execution = check["executionForLatestMaterialization"]
            evaluated[f"{key}:{check['name']}"] = execution and execution["status"]
    assert all(status == "SUCCEEDED" for status in evaluated.values()), evaluated
    print(f"asset checks seen through the UI: {sorted(evaluated)}")

    # The sensor keeps the status table current: every partition COMPLETED.
    def status_recorded():
        found = dagster_dev.gql(MATERIALIZATIONS, {"key": {"path": ["backfill_status"]}})
        for m in found["assetOrError"]["assetMaterializations"]:
            if _metadata(m).get("partitions_completed") == 3:
                return m
        return None

    status = dagster_dev.wait_for("the status table", status_recorded, timeout=60)
    assert _metadata(status)["partitions_stalled"] == 0

    # A stalled partition: the sensor fails the no_stalled_backfills check a person sees.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key,"
            " status, total_to_process, total_processed, started_at, last_checkpoint_at)"
            " VALUES ('/elsewhere/stuck.csv', 'CSV', '2024-01-09', 'IN_PROGRESS', 100, 10,"
            " NOW()::timestamp - interval '3 hours', NOW()::timestamp - interval '2 hours')"
        )

    def check_failed():
        executions = dagster_dev.gql(
            CHECK_EXECUTIONS,
            {"key": {"path": ["backfill_status"]}, "check": "no_stalled_backfills"},
        )["assetCheckExecutions"]
        return executions and executions[0]["status"] == "FAILED" and executions[0]

    failed = dagster_dev.wait_for("the stall check to fail", check_failed, timeout=90)
    assert "2024-01-09" in failed["evaluation"]["description"]
    assert failed["evaluation"]["severity"] == "ERROR"

    # The password in DATABASE_URL appears nowhere the UI or the process shows.
    run = dagster_dev.gql(RUN, {"id": backfill["runs"][0]["runId"]})
    assert run["logsForRun"]["events"]
    dagster_dev.gql(INSTANCE)
    for text in dagster_dev.responses:
        assert SECRET not in text
    assert SECRET not in dagster_dev.log.read_text(errors="replace")


def test_a_long_backfill_from_the_ui_runs_in_several_runs(
    tmp_path: Path, secret_url: str, database_url: str
) -> None:
    """BACKFILL_MAX_PARTITIONS_PER_RUN=30: a 90-day backfill launched as the UI launches it
    becomes three runs, which the daemon runs within the ledger_pg pool; every run is green and
    every entry posted exactly once."""
    days = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(90)]
    with running_dagster_dev(
        tmp_path, secret_url, days=90, entries=900, BACKFILL_MAX_PARTITIONS_PER_RUN="30"
    ) as dagster:
        launched = dagster.gql(
            LAUNCH,
            {
                "params": {
                    "partitionNames": days,
                    "assetSelection": [{"path": [key]} for key in STAGES],
                    "fromFailure": False,
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def finished():
            backfill = dagster.gql(BACKFILL, {"id": launched["backfillId"]})
            found = backfill["partitionBackfillOrError"]
            return found if found["status"] not in {"REQUESTED", "CANCELING"} else None

        backfill = dagster.wait_for("the backfill", finished, timeout=900, every=3)
        assert backfill["status"] in {"COMPLETED_SUCCESS", "COMPLETED"}, backfill
        statuses = [r["status"] for r in backfill["runs"]]
        assert statuses == ["SUCCESS"] * 3, statuses
        posted = dagster.gql(MATERIALIZATIONS_ALL, {"key": {"path": ["posted_batches"]}})
        partitions = [m["partition"] for m in posted["assetOrError"]["assetMaterializations"]]
        assert sorted(partitions) == days
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 900
        runs = conn.execute(
            "SELECT count(DISTINCT run_id) FROM ledger_backfill_checkpoints"
        ).fetchone()[0]
        assert runs == 3
        assert_ledger_invariants(conn)


# The code location `dagster dev -m ledger_backfill_dagster.definitions` serves.
CODE_LOCATION_SELECTOR = {
    "repositoryLocationName": "ledger_backfill_dagster.definitions",
    "repositoryName": "__repository__",
}
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on PythonError { message }
  }
}"""
SCHEDULE_TICKS = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { scheduleState { ticks(limit: 10) { status runIds timestamp } } }
  }
}"""
RUNS = """
query($tag: String!) {
  runsOrError(filter: {tags: [{key: "ledger_backfill/trigger", value: $tag}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def test_the_daily_schedule_backfills_the_closed_day_once(
    tmp_path: Path, secret_url: str, database_url: str
) -> None:
    """daily_backfill_schedule through the real daemon, ticking every minute: the first tick
    backfills the UTC day closed before it from a real CSV; the next tick launches nothing."""
    closed = (datetime.now(UTC) - timedelta(days=1)).date()
    with running_dagster_dev(
        tmp_path,
        secret_url,
        days=1,
        entries=120,
        start=closed,
        BACKFILL_SCHEDULE_CRON="* * * * *",
    ) as dagster:
        selector = {**CODE_LOCATION_SELECTOR, "scheduleName": "daily_backfill_schedule"}
        started = dagster.gql(START_SCHEDULE, {"selector": selector})["startSchedule"]
        assert started["__typename"] == "ScheduleStateResult", started

        def two_ticks():
            found = dagster.gql(SCHEDULE_TICKS, {"selector": selector})["scheduleOrError"]
            ticks = found["scheduleState"]["ticks"]
            done = [t for t in ticks if t["status"] in {"SUCCESS", "SKIPPED", "FAILURE"}]
            return ticks if len(done) >= 2 else None

        ticks = dagster.wait_for("two schedule ticks", two_ticks, timeout=300, every=5)
        assert all(t["status"] != "FAILURE" for t in ticks), ticks
        launched = [run_id for t in ticks for run_id in t["runIds"]]
        assert len(launched) == 1, ticks  # the second tick found the day already requested

        def run_done():
            runs = dagster.gql(RUNS, {"tag": "daily_backfill_schedule"})["runsOrError"]["results"]
            return runs if runs and runs[0]["status"] in {"SUCCESS", "FAILURE"} else None

        (run,) = dagster.wait_for("the scheduled run", run_done, timeout=300, every=3)
        assert run["status"] == "SUCCESS"
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/partition"] == closed.isoformat()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 120
        assert_ledger_invariants(conn)


START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on PythonError { message }
  }
}"""
SENSOR_TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 20) { status skipReason timestamp } } }
  }
}"""
BACKFILLS = """
query {
  partitionBackfillsOrError(limit: 20) {
    ... on PartitionBackfills {
      results { id status tags { key value } numPartitions runs(limit: 20) { status } }
    }
  }
}"""


def test_the_catch_up_requests_missing_days_as_one_backfill_once(
    tmp_path: Path, secret_url: str, database_url: str
) -> None:
    """catch_up_sensor through the real daemon: the closed days never posted are requested as
    one backfill; once they are posted, later ticks request nothing."""
    first = (datetime.now(UTC) - timedelta(days=3)).date()
    with running_dagster_dev(
        tmp_path,
        secret_url,
        days=3,
        entries=150,
        start=first,
        BACKFILL_START_DATE=first.isoformat(),
        CATCH_UP_SENSOR_INTERVAL_SECONDS="5",
    ) as dagster:
        selector = {**CODE_LOCATION_SELECTOR, "sensorName": "catch_up_sensor"}
        started = dagster.gql(START_SENSOR, {"selector": selector})["startSensor"]
        assert started["__typename"] == "Sensor", started

        def catch_ups():
            results = dagster.gql(BACKFILLS)["partitionBackfillsOrError"]["results"]
            return [
                b
                for b in results
                if {"key": "ledger_backfill/trigger", "value": "catch_up_sensor"} in b["tags"]
            ]

        def finished():
            found = catch_ups()
            return found if found and found[0]["status"] not in {"REQUESTED", "CANCELING"} else None

        (backfill,) = dagster.wait_for("the catch-up backfill", finished, timeout=300, every=3)
        assert backfill["status"] in {"COMPLETED_SUCCESS", "COMPLETED"}, backfill
        assert backfill["numPartitions"] == 3
        assert {r["status"] for r in backfill["runs"]} == {"SUCCESS"}

        def quiet_ticks():
            found = dagster.gql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
            reasons = [t["skipReason"] or "" for t in found["sensorState"]["ticks"]]
            return reasons if sum("every closed day is posted" in r for r in reasons) >= 2 else None

        dagster.wait_for("two ticks with nothing to do", quiet_ticks, timeout=120, every=3)
        assert len(catch_ups()) == 1  # no second backfill
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 150
        assert_ledger_invariants(conn)
