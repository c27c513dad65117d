"""The CLI's contract (issue 16, point 5), run as a user runs it: `ledger-backfill` subprocesses
on a real PostgreSQL. Exit codes: 0 fine, 1 a finding, 2 usage or configuration, 3 database
unreachable; `--json` on read commands, also before any migration; `--version`; `doctor`; one
stderr line when falling back to the embedded server; no warning noise from the definitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster import cli
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.cli import REPO, dagster_home, run
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants

LEDGER_BACKFILL = Path(sys.executable).with_name("ledger-backfill")
PASSWORD = "Zq7-unreachable-pw"


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, **settings}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([str(LEDGER_BACKFILL), *args], env, timeout=120)


def test_version_usage_and_help(tmp_path: Path) -> None:
    done = _cli("--version", env=_env())
    assert done.returncode == 0 and done.stdout.startswith("ledger-backfill ")
    done = _cli("status", "--no-such-flag", env=_env())
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    done = _cli("generate", "--start", "yesterday", env=_env())
    assert done.returncode == 2 and "not a date" in done.stderr
    assert "Traceback" not in done.stderr
    for command in ("generate", "status", "pause", "resume", "roles", "summary", "doctor"):
        help_text = _cli(command, "--help", env=_env()).stdout
        options = [line for line in help_text.splitlines() if line.strip().startswith("--")]
        assert options or command == "migrate"
        # every flag explains itself: its help is on its line or the next
        lines = help_text.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("--") and "  " not in stripped:
                assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 20), (command, line)


def test_an_unreachable_database_exits_3_without_its_password() -> None:
    env = _env(DATABASE_URL=f"postgresql://backfill:{PASSWORD}@127.0.0.1:1/ledger")
    for args in (["status"], ["status", "--json"], ["doctor"]):
        done = _cli(*args, env=env)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert PASSWORD not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert "database error (unreachable)" in _cli("status", env=env).stderr


def test_json_before_any_migration_then_doctor(database_url: str, tmp_path: Path) -> None:
    env = _env(DATABASE_URL=database_url)
    done = _cli("status", "--json", env=env)
    assert done.returncode == 0
    assert json.loads(done.stdout)["schema"] == "missing"

    done = _cli("doctor", "--json", env=env)
    report = json.loads(done.stdout)
    states = {c["name"]: c["state"] for c in report["checks"]}
    assert done.returncode == 1 and states["migrations"] == "finding"
    assert "PENDING" in next(c["detail"] for c in report["checks"] if c["name"] == "migrations")

    assert _cli("migrate", env=env).returncode == 0
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("accountId,currencyCode\nA,USD\n")
    done = _cli("doctor", env={**env, "ACCOUNTS_FILE": str(accounts)})
    assert done.returncode == 0, done.stdout
    assert "ledger database" in done.stdout and "instance storage" in done.stdout
    assert str(accounts) in done.stdout

    done = _cli("doctor", "--json", env={**env, "BACKFILL_SOURCE_FILE": str(tmp_path / "gone.csv")})
    assert done.returncode == 1
    (source,) = [
        c for c in json.loads(done.stdout)["checks"] if c["name"] == "BACKFILL_SOURCE_FILE"
    ]
    assert source["state"] == "finding" and "cannot be read" in source["detail"]


def test_a_configuration_error_exits_2_without_a_traceback(database_url: str) -> None:
    done = _cli("status", env=_env(DATABASE_URL=database_url, STALL_THRESHOLD_SECONDS="0"))
    assert done.returncode == 2 and done.stderr.startswith("configuration error:")
    assert "Traceback" not in done.stderr


def test_the_embedded_fallback_is_said_once_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    cli._database()  # builds the resource only: the server starts on first connection
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DATABASE_URL is not set: using the embedded PostgreSQL" in err


def test_loading_the_definitions_prints_no_warning() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import ledger_backfill_dagster.definitions"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "BetaWarning" not in done.stderr and "PreviewWarning" not in done.stderr


def test_dg_check_defs_and_dg_launch_of_a_range(
    tmp_path: Path, backfill_env: dict[str, str], database_url: str
) -> None:
    """Dagster 1.13's `dg` loads the same code location: `dg check defs` passes and `dg launch`
    backfills a partition range as `dagster asset materialize` does."""
    data = generate(tmp_path / "data", entries=400, days=2, accounts=10, start=date(2024, 1, 1))
    dg = Path(sys.executable).with_name("dg")
    env = {
        **_env(),
        **backfill_env,
        "DAGSTER_HOME": str(dagster_home(tmp_path)),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
    }
    done = run([str(dg), "check", "defs"], env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
    done = run(
        [str(dg), "launch", "--assets", "*", "--partition-range", "2024-01-01...2024-01-02"],
        env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 400
        assert_ledger_invariants(conn)
