"""Least-privilege database roles: apply `sql/roles.sql` with the role names filled in.

Role names are identifiers, so they are composed with `psycopg.sql.Identifier` (and
`psycopg.sql.Literal` where the file needs them as text), never pasted into the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ledger_backfill_dagster.ledger.migrations import apply_migrations
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import sql_dir


@dataclass(frozen=True)
class RoleNames:
    reader: str = "ledger_reader"
    backfill: str = "ledger_backfill"
    rollback: str = "ledger_rollback"

    @classmethod
    def with_prefix(cls, prefix: str) -> RoleNames:
        return cls(f"{prefix}ledger_reader", f"{prefix}ledger_backfill", f"{prefix}ledger_rollback")


def roles_sql(names: RoleNames, database: str) -> sql.Composed:
    template = (sql_dir() / "roles.sql").read_text(encoding="utf-8")
    return sql.SQL(template).format(  # ty: ignore[invalid-argument-type]
        database=sql.Identifier(database),
        reader=sql.Identifier(names.reader),
        backfill=sql.Identifier(names.backfill),
        rollback=sql.Identifier(names.rollback),
        reader_name=sql.Literal(names.reader),
        backfill_name=sql.Literal(names.backfill),
        rollback_name=sql.Literal(names.rollback),
    )


def apply_roles(conn: psycopg.Connection, names: RoleNames | None = None) -> RoleNames:
    """Create the group roles if missing and (re)grant their privileges on this database's
    ledger tables, in one transaction. Migrates first: grants need the tables."""
    names = names or RoleNames()
    apply_migrations(conn)
    conn.commit()
    database = one_row(conn.execute("SELECT current_database()"))[0]
    with conn.transaction():
        conn.execute(roles_sql(names, database))
    return names
