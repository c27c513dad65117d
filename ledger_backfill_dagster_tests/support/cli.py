"""The project's commands as a user types them (`dagster asset materialize`, `dagster job execute`,
`ledger-backfill`), run in subprocesses: one spelling of each command line for every test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's console scripts, whatever PATH says
DAGSTER = BIN / "dagster"
LEDGER_BACKFILL = BIN / "ledger-backfill"
CODE_LOCATION = ("-m", "ledger_backfill_dagster.definitions")


def dagster_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the project's own dagster.yaml (instance storage on PostgreSQL,
    the `ledger_pg` pool), so the runs behave as a user's runs do."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    return home


def materialize_command(*partition: str, select: str = "*") -> list[str]:
    """`dagster asset materialize` of `select`; `partition` is e.g. ("--partition", key)."""
    return [str(DAGSTER), "asset", "materialize", *CODE_LOCATION, "--select", select, *partition]


def partition_range(first: str, last: str) -> tuple[str, str]:
    return ("--partition-range", f"{first}...{last}")


def job_command(job: str, *args: str, tags: dict[str, str] | None = None) -> list[str]:
    """`dagster job execute` of `job`, with run `tags` (JSON) and further `args` (e.g. -c)."""
    tagged = ["--tags", json.dumps(tags)] if tags is not None else []
    return [str(DAGSTER), "job", "execute", *CODE_LOCATION, "-j", job, *tagged, *args]


def run(
    command: list[str], env: dict[str, str], *, timeout: float = 600, cwd: Path | None = REPO
) -> subprocess.CompletedProcess:
    """`command` with exactly the environment `env` (callers merge os.environ as they mean to),
    output captured as text."""
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
