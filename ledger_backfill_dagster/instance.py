"""Dagster's own instance storage (runs, event log, schedules) on PostgreSQL, wherever it is.

`dagster.yaml` names this class instead of a literal `postgres_url`, so one file serves every
setup: DAGSTER_PG_URL if set, else DATABASE_URL (Dagster's tables live beside the ledger's; their
names do not clash), else a `dagster` database on the embedded server. The URL is resolved when
the instance loads and is never written to the instance config the UI shows.

SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, on which dagster-postgres's `NOTIFY` statement
fails; the URL is therefore given to it with the psycopg2 dialect, which dagster-postgres installs.
"""

from __future__ import annotations

import os
import re

from dagster_postgres import DagsterPostgresStorage
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from ledger_backfill_dagster.resources.embedded_postgres import (
    DAGSTER_DATABASE,
    embedded_server_uri,
)


def with_psycopg2_dialect(url: str) -> str:
    """A libpq URL or key=value conninfo → a SQLAlchemy URL with the psycopg2 dialect."""
    if re.match(r"^postgres(?:ql)?(?:\+\w+)?://", url):
        return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg2://", url)
    info = conninfo_to_dict(url)
    host = str(info.get("host") or "")
    socket_dir = host if host.startswith("/") else None
    return URL.create(
        "postgresql+psycopg2",
        username=info.get("user"),
        password=info.get("password"),
        host=None if socket_dir else host or None,
        port=int(info["port"]) if info.get("port") and not socket_dir else None,
        database=info.get("dbname"),
        query={"host": socket_dir} if socket_dir else {},
    ).render_as_string(hide_password=False)


def instance_postgres_url() -> str:
    url = os.environ.get("DAGSTER_PG_URL") or os.environ.get("DATABASE_URL")
    return with_psycopg2_dialect(url or embedded_server_uri(DAGSTER_DATABASE))


class LedgerInstanceStorage(DagsterPostgresStorage):
    """dagster-postgres storage whose URL comes from the environment or the embedded server."""

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> LedgerInstanceStorage:
        return cls(instance_postgres_url(), inst_data=inst_data)
