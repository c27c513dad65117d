"""The ledger database resource: where the ledger lives and how to reach it.

The URL comes from DATABASE_URL through `dg.EnvVar`, so Dagster shows the variable's name, never
its value. Without it, the embedded PostgreSQL is started under the project's state folder. The URL
is checked before psycopg sees it (`redaction.check_postgres_url`): libpq's own parse errors quote
the part they cannot read, which may be a piece of the password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import Field

from ledger_backfill_dagster.ledger.migrations import apply_migrations
from ledger_backfill_dagster.lib.embedded_postgres import LEDGER_DATABASE, embedded_server_uri
from ledger_backfill_dagster.lib.redaction import check_postgres_url


class LedgerDatabase(dg.ConfigurableResource):
    """The PostgreSQL database holding the ledger (DATABASE_URL, or the embedded server)."""

    database_url: str | None = Field(
        default=None,
        description="DATABASE_URL, given as an EnvVar. Unset: the embedded PostgreSQL is used.",
    )
    application_name: str = Field(default="ledger_backfill_dagster")

    def url(self) -> str:
        """DATABASE_URL once it is known to parse as meant (else MalformedUrlError, which shows
        no part of it), or the embedded server's URL."""
        if not self.database_url:
            return embedded_server_uri(LEDGER_DATABASE)
        check_postgres_url("DATABASE_URL", self.database_url)
        return self.database_url

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
