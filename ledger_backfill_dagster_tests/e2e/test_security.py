"""Secrets stay secret: a known password in DATABASE_URL and known tokens in the environment appear
in no log, run config, event storage, report, exception, checkpoint or CLI output, for a real
backfill in process and through the CLI, and for one that fails. (The UI's side is checked in
e2e/test_ui.py.) On a trust-authenticated test server the password is not needed to connect,
but it is still given, so everywhere it could leak is searched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._serdes import serialize_value
from psycopg import sql

from ledger_backfill_dagster.definitions import build_definitions, ledger_database
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support import cli
from ledger_backfill_dagster_tests.support.cli import REPO, dagster_home
from ledger_backfill_dagster_tests.support.helpers import (
    ASSETS,
    assert_ledger_invariants,
    range_tags,
)
from ledger_backfill_dagster_tests.support.pg_roles import login_role, unique_prefix

PASSWORD = "Sec-Pw-4f8e2d19c7"
API_TOKEN = "api-tok-91b3e5a7"
RELAY_TOKEN = "relay-tok-0c6d2f48"
WEBHOOK_TOKEN = "hook-tok-5e7a1b3c"
SECRETS = [PASSWORD, API_TOKEN, RELAY_TOKEN, WEBHOOK_TOKEN]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}"


def files_text(root: Path) -> str:
    parts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix not in {".parquet", ".sock"}:
            parts.append(f"== {path}\n" + path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def database_text(url: str) -> str:
    """Every row of every table in the database as text (ledger and Dagster's own tables)."""
    out = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {}.{} t").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchall()
            out.extend(f"{table}: {r[0]}" for r in rows)
    return "\n".join(out)


@pytest.fixture
def secret_env(
    tmp_path: Path,
    backfill_env: dict[str, str],
    database_url: str,
    pg_admin_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The backfill's environment with a password in DATABASE_URL and tokens beside it."""
    data = generate(tmp_path / "data", entries=1200, days=2, accounts=15, start=date(2024, 1, 1))
    with login_role(
        database_url, pg_admin_url, f"{unique_prefix()}sec", PASSWORD, owns_database=True
    ) as url:
        assert PASSWORD in url
        env = {
            **backfill_env,
            "DATABASE_URL": url,
            "BACKFILL_SOURCE_FILE": str(data.entries_file),
            "ACCOUNTS_FILE": str(data.accounts_file),
            "BACKFILL_API_TOKEN": API_TOKEN,
            "OUTBOX_RELAY_TOKEN": RELAY_TOKEN,
            "STALL_ALERT_WEBHOOK_URL": f"http://127.0.0.1:9/services/{WEBHOOK_TOKEN}",
            "ALERT_WEBHOOK_URL": f"http://127.0.0.1:9/alerts/{WEBHOOK_TOKEN}",
            "BATCH_SIZE": "300",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


def _job() -> dg.JobDefinition:
    """The backfill job with the code location's own resources: DATABASE_URL as an EnvVar."""
    selection = dg.AssetSelection.assets(*ASSETS).without_checks()
    return build_definitions(
        jobs=[dg.define_asset_job("secret_backfill", selection=selection)]
    ).resolve_job_def("secret_backfill")


def _run_and_collect(instance: dg.DagsterInstance, tags: dict) -> tuple[bool, str]:
    result = _job().execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    stored = [
        serialize_value(run),
        json.dumps(run.run_config, default=str),
        json.dumps(dict(run.tags)),
        *(serialize_value(entry) for entry in instance.all_logs(result.run_id)),
    ]
    return result.success, "\n".join(stored)


def test_in_process_backfill_keeps_secrets(
    secret_env: dict[str, str], database_url: str, tmp_path: Path, capfd, caplog
) -> None:
    with dg.instance_for_test() as instance:
        ok, stored = _run_and_collect(
            instance,
            range_tags("2024-01-01", "2024-01-02"),
        )
    assert ok
    # the resource holds the variable's name, not its value
    assert isinstance(ledger_database().database_url, dg.EnvVar)
    assert PASSWORD not in repr(ledger_database())
    assert_no_secret(stored, "the run record, run config, tags or event log")
    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err, "stdout/stderr")
    assert_no_secret(caplog.text, "Python logging")
    assert_no_secret(files_text(tmp_path / "state"), "reports and staged files")
    assert_no_secret(database_text(database_url), "the ledger database")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1200
        assert_ledger_invariants(conn)


def test_failing_backfill_keeps_secrets(
    secret_env: dict[str, str], database_url: str, monkeypatch, capfd, caplog
) -> None:
    """The database cannot be reached: the failure says so, without the password."""
    unreachable = f"postgresql://ledger:{PASSWORD}@127.0.0.1:1/ledger?connect_timeout=2"
    monkeypatch.setenv("DATABASE_URL", unreachable)
    monkeypatch.setenv("MAX_RETRIES", "0")
    with dg.instance_for_test() as instance:
        ok, stored = _run_and_collect(instance, {"dagster/partition": "2024-01-01"})
    assert not ok
    assert "127.0.0.1" in stored or "connection" in stored.lower()  # it does say what failed
    assert_no_secret(stored, "a failed run's event log (errors and stack traces)")
    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err + caplog.text, "a failed run's output")

    # A posting failure recorded in a checkpoint: its message is redacted too.
    from ledger_backfill_dagster.ledger import checkpoints

    monkeypatch.setenv("DATABASE_URL", secret_env["DATABASE_URL"])
    with psycopg.connect(secret_env["DATABASE_URL"], autocommit=True) as conn:
        from ledger_backfill_dagster.ledger.migrations import apply_migrations

        apply_migrations(conn)
        conn.execute(
            "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)"
            " VALUES ('s', 'CSV', '2024-01-01')"
        )
        checkpoint_id = conn.execute("SELECT id FROM ledger_backfill_checkpoints").fetchone()[0]
        checkpoints.finish(
            conn, checkpoint_id, checkpoints.FAILED, f"OperationalError: {unreachable} refused"
        )
        message = conn.execute("SELECT error_message FROM ledger_backfill_checkpoints").fetchone()
    assert PASSWORD not in message[0] and "***" in message[0]


@pytest.mark.slow
def test_cli_backfill_keeps_secrets(
    secret_env: dict[str, str], database_url: str, tmp_path
) -> None:
    """`dagster asset materialize` with our dagster.yaml: Dagster's run, event and schedule
    storage live in the same database (DATABASE_URL), so its tables are searched too."""
    home = dagster_home(tmp_path)
    env = {**os.environ, **secret_env, "DAGSTER_HOME": str(home)}
    outputs = []
    for command in (
        cli.materialize_command(*cli.partition_range("2024-01-01", "2024-01-02")),
        [str(cli.LEDGER_BACKFILL), "summary"],
    ):
        done = cli.run(command, env)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout + done.stderr)
    # a CLI error about the database is redacted as well
    broken = {**env, "DATABASE_URL": f"postgresql://x:{PASSWORD}@127.0.0.1:1/x?connect_timeout=2"}
    done = cli.run([str(cli.LEDGER_BACKFILL), "status"], broken, timeout=120, cwd=None)
    assert done.returncode != 0 and "database error" in done.stderr
    outputs.append(done.stdout + done.stderr)

    assert_no_secret("\n".join(outputs), "CLI stdout/stderr")
    assert_no_secret(files_text(home), "DAGSTER_HOME (compute logs, storage)")
    assert_no_secret(files_text(tmp_path / "state"), "reports and staged files")
    everything = database_text(database_url)
    # Dagster's event log is in this database (serialized as PIPELINE_SUCCESS), and searched
    assert "PIPELINE_SUCCESS" in everything and "ASSET_MATERIALIZATION" in everything
    assert_no_secret(everything, "the database (ledger and Dagster event/run storage)")


def test_webserver_binds_loopback_by_default() -> None:
    """`make ui` binds 127.0.0.1 unless UI_HOST says otherwise (the e2e test checks the socket)."""
    makefile = (REPO / "Makefile").read_text()
    assert "\nUI_HOST ?= 127.0.0.1\n" in makefile
    ui = makefile[makefile.index("\nui:") :].split("\n\n")[0]
    assert "dagster dev -h $(UI_HOST)" in ui
