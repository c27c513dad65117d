"""Test support: login roles with known passwords on the test server, cleaned up afterwards.

Roles are server-wide, so every name carries a random prefix, and everything a role owns or was
granted in the test database is dropped with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict


def unique_prefix() -> str:
    return f"lbt{uuid.uuid4().hex[:8]}_"


def url_for_login(database_url: str, user: str, password: str) -> str:
    """A `postgresql://user:password@host:port/db` URL (socket directory as ?host=)."""
    info = conninfo_to_dict(database_url)
    host = str(info.get("host") or "")
    dbname = info["dbname"]
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    if host.startswith("/"):
        return f"postgresql://{credentials}@/{dbname}?host={quote(host, safe='/')}"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{credentials}@{host or 'localhost'}{port}/{dbname}"


def drop_roles(database_url: str, pg_admin_url: str, roles: list[str]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for role in roles:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@contextmanager
def login_role(
    database_url: str,
    pg_admin_url: str,
    name: str,
    password: str,
    member_of: str | None = None,
    owns_database: bool = False,
) -> Iterator[str]:
    """Create a LOGIN role with this password; yields its connection URL; drops it afterwards."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        if member_of:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(name))
            )
        if owns_database:
            database = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(name)
                )
            )
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(name)))
    try:
        yield url_for_login(database_url, name, password)
    finally:
        if owns_database:
            with psycopg.connect(database_url, autocommit=True) as conn:
                database = conn.execute("SELECT current_database()").fetchone()[0]
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(
                        sql.Identifier(database)
                    )
                )
                conn.execute(
                    sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name))
                )
        drop_roles(database_url, pg_admin_url, [name])
