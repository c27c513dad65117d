"""A built wheel carries the top-level `sql/` folder and, installed outside the checkout, finds it.

The wheel is built from this repository and installed with `pip --target` into a folder of its
own (its dependencies come from the running virtualenv), then imported in a subprocess whose
only extra import path is that folder and whose working directory is outside the repository, so
the installed copy, not the editable checkout, is what runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from ledger_backfill_dagster.ledger.migrations import DEFERRED, MIGRATION_FILE

REPO = Path(__file__).resolve().parents[2]
REPO_SQL = REPO / "sql"
LEDGER_TABLES = {
    "bank_accounts",
    "ledger_entries",
    "dual_ledger_outbox",
    "ledger_backfill_checkpoints",
    "ledger_backfill_rejects",
    "currency_minor_units",
    "ledger_schema_migrations",
}

# Runs in the installed copy: the product's own `ledger-backfill migrate`, then every SQL file
# as the locator finds it.
PROBE = """
import json, sys
import ledger_backfill_dagster
from ledger_backfill_dagster.cli import main
from ledger_backfill_dagster.lib.sql_files import query, sql_dir

status = main(["migrate"])
folder = sql_dir()
print(json.dumps({
    "status": status,
    "package": ledger_backfill_dagster.__file__,
    "sql_dir": str(folder),
    "files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.sql")),
    "queries": {
        name: query(name)
        for p in (folder / "queries").rglob("*.sql")
        if (name := p.relative_to(folder / "queries").with_suffix("").as_posix())
    },
}))
"""


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    what = "the probe" if args[1] == "-c" else " ".join(map(str, args[1:4]))
    assert done.returncode == 0, f"{what} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _install_wheel(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO], tmp_path)
    (wheel,) = wheels.glob("ledger_backfill_dagster-*.whl")
    site = tmp_path / "site"
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        tmp_path,
    )
    return site


def test_installed_wheel_migrates_and_reads_every_query(tmp_path: Path, database_url: str) -> None:
    site = _install_wheel(tmp_path)
    # PEP 561: the marker that lets a user's type checker read the package's annotations
    assert (site / "ledger_backfill_dagster" / "py.typed").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_SQL_DIR"}
    env.update(PYTHONPATH=str(site), DATABASE_URL=database_url)

    out = json.loads(_run([sys.executable, "-c", PROBE], elsewhere, env).splitlines()[-1])

    assert out["status"] == 0
    assert Path(out["package"]).is_relative_to(site)
    assert Path(out["sql_dir"]) == site / "ledger_backfill_dagster" / "_sql"
    repo_files = sorted(p.relative_to(REPO_SQL).as_posix() for p in REPO_SQL.rglob("*.sql"))
    assert out["files"] == repo_files
    queries = REPO_SQL / "queries"
    assert out["queries"] == {
        p.relative_to(queries).with_suffix("").as_posix(): p.read_text(encoding="utf-8")
        for p in queries.rglob("*.sql")
    }
    assert all("/" in name for name in out["queries"]), "every query sits in an area folder"
    with psycopg.connect(database_url) as conn:
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables")}
        applied = [v for (v,) in conn.execute("SELECT version FROM ledger_schema_migrations")]
    assert LEDGER_TABLES <= tables
    expected = [m.group(1) for p in REPO_SQL.glob("*.sql") if (m := MIGRATION_FILE.match(p.name))]
    assert sorted(applied) == sorted(v for v in expected if v not in DEFERRED)
