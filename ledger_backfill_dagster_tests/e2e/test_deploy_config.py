"""Past one machine: the instance configurations load and pass Dagster's schema, and partitions
posted by concurrent runs (what the Kubernetes launcher does, one pod per run) stay correct."""

from __future__ import annotations

import importlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import psycopg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.cli import DAGSTER, LEDGER_BACKFILL, REPO, dagster_home
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    cli_materialize,
    expected_balances,
)

K8S = REPO / "deploy" / "k8s"
K8S_ENV = {
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_HOST": "postgres.ledger-backfill.svc",
    "DAGSTER_PG_DB": "dagster",
}


def _class_entries(config: dict) -> dict[str, dict]:
    """Every `module`/`class`/`config` entry of an instance config, by its key."""
    return {
        key: value
        for key, value in config.items()
        if isinstance(value, dict) and {"module", "class"} <= value.keys()
    }


def _validate(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Dagster's instance schema, then each pluggable class's own config schema, with its
    env-sourced fields resolved."""
    for key, value in K8S_ENV.items():
        monkeypatch.setenv(key, value)
    config, _ = dagster_instance_config(str(folder), "dagster.yaml")
    for key, entry in _class_entries(config).items():
        klass = getattr(importlib.import_module(entry["module"]), entry["class"])
        result = process_config(klass.config_type(), entry.get("config") or {})
        assert result.success, f"{key}: {[e.message for e in result.errors or []]}"
    return config


def test_k8s_instance_config_passes_dagster_schema(monkeypatch, tmp_path: Path) -> None:
    config = _validate(K8S, monkeypatch)
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 2
    assert config["run_retries"]["enabled"] and config["run_monitoring"]["enabled"]
    # no credential is written in the file: every one comes from the environment
    text = (K8S / "dagster.yaml").read_text()
    for key in ("DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST"):
        assert K8S_ENV[key] not in text
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }


def test_k8s_run_launcher_builds_from_that_config(monkeypatch, tmp_path: Path) -> None:
    """The launcher really constructs from our config (a kubeconfig for a cluster that is never
    contacted stands in for the in-cluster credentials)."""
    from dagster_k8s import K8sRunLauncher

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config = _validate(K8S, monkeypatch)["run_launcher"]["config"]
    launcher_config = {**config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    processed = process_config(K8sRunLauncher.config_type(), launcher_config)
    assert processed.success, processed.errors
    launcher = K8sRunLauncher.from_config_value(None, processed.value)
    assert launcher.job_namespace == "ledger-backfill"
    assert "ledger-backfill-db" in launcher.env_secrets
    assert launcher.volumes[0]["persistentVolumeClaim"]["claimName"] == "ledger-backfill-state"


def test_local_instance_config_passes_dagster_schema(monkeypatch) -> None:
    config = _validate(REPO, monkeypatch)
    assert config["storage"]["custom"]["class"] == "LedgerInstanceStorage"
    assert config["run_retries"]["enabled"]


@pytest.mark.slow
def test_concurrent_runs_on_different_partitions(
    tmp_path: Path, backfill_env: dict[str, str], database_url: str
) -> None:
    """Three `dagster asset materialize` processes at once, each a partition range, all sharing
    every account: the ledger's per-batch account locks (sorted order) keep balances exact."""
    data = generate(tmp_path / "data", entries=6000, days=6, accounts=12, start=date(2024, 1, 1))
    env = {
        **backfill_env,
        "DAGSTER_HOME": str(dagster_home(tmp_path)),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BATCH_SIZE": "200",
    }
    ranges = [
        ("2024-01-01", "2024-01-02"),
        ("2024-01-03", "2024-01-04"),
        ("2024-01-05", "2024-01-06"),
    ]

    def run(first_last: tuple[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
        started = time.monotonic()
        done = cli_materialize(*first_last, env)
        return done, started, time.monotonic()

    # Set up once first, as docs/operations.md says: the ledger schema, and the "ledger_pg" pool's
    # limit row (Dagster creates it on first use, and two runs doing that at the same moment fail
    # on its unique key: a Dagster race, not ours).
    for command in (
        [str(LEDGER_BACKFILL), "migrate"],
        [str(DAGSTER), "instance", "concurrency", "set", "ledger_pg", "4"],
    ):
        subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, ranges))
    for done, _, _ in results:
        assert done.returncode == 0, done.stderr[-3000:]
    # they really overlapped in time
    latest_start = max(started for _, started, _ in results)
    earliest_end = min(ended for _, _, ended in results)
    assert latest_start < earliest_end

    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 6000
        assert_ledger_invariants(conn)
        stored = {
            k: v
            for k, v in conn.execute("SELECT id, balance FROM bank_accounts").fetchall()
            if v != 0
        }
        runs = conn.execute("SELECT count(DISTINCT backfill_run_id) FROM ledger_entries").fetchone()
        statuses = conn.execute(
            "SELECT status, count(*) FROM ledger_backfill_checkpoints GROUP BY 1"
        ).fetchall()
    expected = {k: v for k, v in expected_balances(data.entries_file).items() if v != 0}
    assert stored == expected
    assert runs[0] == 3
    assert statuses == [("COMPLETED", 6)]


@pytest.mark.parametrize(
    ("given", "expected_options"),
    [
        ("postgresql://postgres@127.0.0.1:5432/x", "-c synchronous_commit=off"),
        ("host=/tmp/pg dbname=dagster user=postgres", "-c synchronous_commit=off"),
        (
            "postgresql://u@h/db?options=-c%20statement_timeout%3D5000",
            "-c statement_timeout=5000 -c synchronous_commit=off",
        ),
        (  # an operator's explicit choice wins
            "postgresql://u@h/db?options=-c%20synchronous_commit%3Don",
            "-c synchronous_commit=on",
        ),
    ],
)
def test_instance_storage_commits_asynchronously(
    monkeypatch, given: str, expected_options: str
) -> None:
    """Dagster's event log (not the ledger) skips the WAL-flush wait per event; see instance.py."""
    from sqlalchemy.engine import make_url

    from ledger_backfill_dagster.instance import instance_postgres_url

    monkeypatch.setenv("DAGSTER_PG_URL", given)
    url = make_url(instance_postgres_url())
    assert url.drivername == "postgresql+psycopg2"
    assert url.query["options"] == expected_options
