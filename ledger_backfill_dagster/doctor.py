"""`ledger-backfill doctor`: what this machine's settings point at, and whether it works.

Each finding is one line (or one JSON object): which ledger database and which Dagster instance
storage are used (host, port, database and user; never a password), which migrations are applied
and which are pending, whether the source and the chart of accounts can be read, and which of the
product's roles exist. Nothing is changed: no migration, no embedded server started for the
instance (the ledger's is started if DATABASE_URL is unset, as every command does)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from ledger_backfill_dagster.ledger.migrations import DEFERRED, migration_files
from ledger_backfill_dagster.ledger.roles import RoleNames
from ledger_backfill_dagster.lib.embedded_postgres import LEDGER_DATABASE
from ledger_backfill_dagster.lib.env import state_home
from ledger_backfill_dagster.lib.redaction import check_postgres_url, redact, without_driver
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

OK, FINDING, UNREACHABLE = "ok", "finding", "unreachable"


@dataclass
class Check:
    name: str
    state: str  # OK, FINDING or UNREACHABLE
    detail: str


def _where(setting: str, value: str) -> str:
    """host:port/database as user, from a URL already checked to parse (no password)."""
    parts = check_postgres_url(setting, value)
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"{setting}: {host}:{port}/{parts.get('dbname', '')} as {parts.get('user', '(default)')}"


def ledger_database_text() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return _where("DATABASE_URL", url)
    return f"embedded PostgreSQL under {state_home() / 'pgdata'}, database {LEDGER_DATABASE}"


def instance_storage_text() -> str:
    home = os.environ.get("DAGSTER_HOME", "").strip()
    shown = f"DAGSTER_HOME {home}" if home else "DAGSTER_HOME unset"
    for setting in ("DAGSTER_PG_URL", "DATABASE_URL"):
        url = os.environ.get(setting, "").strip()
        if url:
            return f"{shown}; runs and events in {_where(setting, without_driver(url))}"
    return f"{shown}; runs and events in the embedded PostgreSQL, database dagster"


def _readable(setting: str) -> Check:
    value = os.environ.get(setting, "").strip()
    if not value:
        return Check(setting, OK, "not set")
    path = Path(value)
    if path.is_file() and os.access(path, os.R_OK):
        return Check(setting, OK, f"{path} readable ({path.stat().st_size:,} bytes)")
    if path.is_dir() and os.access(path, os.R_OK | os.X_OK):
        return Check(setting, OK, f"{path} is a readable folder")
    return Check(setting, FINDING, f"{path} cannot be read (missing, or no permission)")


def _database_checks(database: LedgerDatabase) -> list[Check]:
    try:
        conn = database.connect(autocommit=True)
    except psycopg.OperationalError as exc:
        return [Check("ledger database reachable", UNREACHABLE, redact(str(exc).strip()))]
    with conn:
        version = conn.execute("SHOW server_version").fetchone()
        user = conn.execute("SELECT current_user").fetchone()
        checks = [
            Check(
                "ledger database reachable",
                OK,
                f"PostgreSQL {version[0] if version else '?'}, connected as {user[0] if user else '?'}",
            )
        ]
        available = [v for v, _ in migration_files()]
        if conn.execute("SELECT to_regclass('ledger_schema_migrations')").fetchone() == (None,):
            applied: list[str] = []
        else:
            applied = [r[0] for r in conn.execute("SELECT version FROM ledger_schema_migrations")]
        pending = [v for v in available if v not in applied and v not in DEFERRED]
        deferred = [v for v in available if v in DEFERRED and v not in applied]
        detail = f"applied {', '.join(sorted(applied)) or 'none'}"
        if deferred:
            detail += f"; {', '.join(deferred)} deferred (apply_balance_constraints_job)"
        checks.append(
            Check(
                "migrations",
                FINDING if pending else OK,
                detail
                + (f"; PENDING {', '.join(pending)} (ledger-backfill migrate)" if pending else ""),
            )
        )
        names = RoleNames()
        wanted = [names.reader, names.backfill, names.rollback]
        found = {
            r[0]
            for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (wanted,))
        }
        missing = [n for n in wanted if n not in found]
        checks.append(
            Check(
                "roles",
                OK,
                f"present: {', '.join(sorted(found)) or 'none'}"
                + (
                    f"; not created: {', '.join(missing)} (ledger-backfill roles)"
                    if missing
                    else ""
                ),
            )
        )
    return checks


def diagnose(database: LedgerDatabase) -> list[Check]:
    return [
        Check("ledger database", OK, ledger_database_text()),
        Check("instance storage", OK, instance_storage_text()),
        *_database_checks(database),
        Check(
            "BACKFILL_SOURCE_TYPE",
            OK,
            os.environ.get("BACKFILL_SOURCE_TYPE", "").strip().upper() or "CSV (default)",
        ),
        _readable("BACKFILL_SOURCE_FILE"),
        _readable("ACCOUNTS_FILE"),
    ]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"checks": [asdict(c) for c in checks], "ok": all(c.state == OK for c in checks)}


def as_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    marks = {OK: "ok  ", FINDING: "FIX ", UNREACHABLE: "DOWN"}
    return "\n".join(f"{marks[c.state]} {c.name:<{width}}  {c.detail}" for c in checks)
