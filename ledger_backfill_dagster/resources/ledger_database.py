"""The ledger database resource: where the ledger lives and how to reach it.

The URL comes from DATABASE_URL through `dg.EnvVar`, so Dagster shows the variable's name, never
its value. Without it, the embedded PostgreSQL is started under the project's state folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import Field

from ledger_backfill_dagster.ledger.migrations import apply_migrations
from ledger_backfill_dagster.resources.embedded_postgres import (
    LEDGER_DATABASE,
    embedded_server_uri,
)

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_PARAM = re.compile(r"(password=)([^&\s]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace any password in a connection string (URL or key=value form) with ***."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)


class LedgerDatabase(dg.ConfigurableResource):
    """The PostgreSQL database holding the ledger (DATABASE_URL, or the embedded server)."""

    database_url: str | None = Field(
        default=None,
        description="DATABASE_URL, given as an EnvVar. Unset: the embedded PostgreSQL is used.",
    )
    application_name: str = Field(default="ledger_backfill_dagster")

    def url(self) -> str:
        return self.database_url or embedded_server_uri(LEDGER_DATABASE)

    def connect(self, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(
            self.url(), autocommit=autocommit, application_name=self.application_name
        )

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with self.connect(autocommit=autocommit) as conn:
            yield conn

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the versions applied now."""
        with self.connection() as conn:
            return apply_migrations(conn)
