"""An idempotent migration runner: applies `sql/NNN_*.sql` in order and records each one.

`004_balance_constraints.sql` is deliberately skipped: the seed applies balance constraints only
after a backfill has been validated (its step 5), which the `apply_balance_constraints` job does.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import psycopg

from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query, sql_dir

log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
DEFERRED = {"004"}  # balance constraints: applied by their own job after the backfill
_LOCK_KEY = 0x1ED6E5  # advisory lock: one migrator at a time across processes


def migration_files(directory: Path | None = None) -> list[tuple[str, Path]]:
    files = []
    for path in sorted((directory or sql_dir()).glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if match:
            files.append((match.group(1), path))
    return files


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply_migrations(conn: psycopg.Connection, include_deferred: bool = False) -> list[str]:
    """Apply every pending migration in its own transaction; return the versions applied."""
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        # CREATE ... IF NOT EXISTS still needs CREATE on the schema: skip it when the table is
        # there, so a least-privilege role (sql/roles.sql) can run an up-to-date schema.
        if one_row(conn.execute("SELECT to_regclass('ledger_schema_migrations')"))[0] is None:
            conn.execute(query("schema/create_migrations_table"))
        done: dict[str, str] = dict(
            conn.execute("SELECT version, checksum FROM ledger_schema_migrations").fetchall()
        )
        for version, path in migration_files():
            if version in DEFERRED and not include_deferred:
                continue
            digest = checksum(path)
            if version in done:
                if done[version] != digest:
                    log.warning("migration %s changed after it was applied", path.name)
                continue
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8"))
                conn.execute(query("schema/record_migration"), (version, path.name, digest))
            applied_now.append(version)
        load_currency_minor_units(conn)
    return applied_now


def load_currency_minor_units(conn: psycopg.Connection) -> None:
    """Refresh ISO 4217 minor units from the maintained `iso4217` package."""
    from ledger_backfill_dagster.entries.currencies import minor_units_table

    with conn.cursor() as cur:
        cur.executemany(query("schema/currency_minor_units"), sorted(minor_units_table().items()))
