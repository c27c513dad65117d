"""Dagster's own instance storage (runs, event log, schedules) on PostgreSQL, wherever it is.

`dagster.yaml` names this class instead of a literal `postgres_url`, so one file serves every
setup: DAGSTER_PG_URL if set, else DATABASE_URL (Dagster's tables live beside the ledger's; their
names do not clash), else a `dagster` database on the embedded server. The URL is resolved when
the instance loads and is never written to the instance config the UI shows.

Dagster's own sessions run with `synchronous_commit=off`: a backfill over 1,096 days writes
~11,000 events (planned and done materializations), each an INSERT committed on its own, and each
would otherwise wait for a WAL flush, half of them before the run starts (docs/performance.md,
'Why the code is shaped this way'). This storage is the run history, not the ledger: a server
crash can lose the last fraction of a second of events, never an entry, a balance or a
checkpoint, which keep their own synchronous sessions. A URL that sets `synchronous_commit`
itself keeps its own value.

dagster-postgres also opens a new connection for every storage call (SQLAlchemy NullPool, so an
idle instance holds none), so every event recorded would pay for a connection of its own
(docs/performance.md, 'Why the code is shaped this way'). Here each of the three storages keeps
one pooled connection (plus up to 3 overflow, checked before use so a restarted server costs a
reconnect, not an error) for the life of the process.

And it turns on Dagster's batched event writes (DAGSTER_EVENT_BATCH_SIZE, opt-in, read on every
event): a single-run backfill plans and then materializes every asset for every partition, and
batched, those become one multi-row INSERT per 1,000 events instead of one statement each, which
was most of such a run's time (docs/performance.md, 'Why the code is shaped this way'). The
variable is set when this storage loads (every process that uses the instance loads it first); a
value set outside wins.

A run's plan is written in batches too (`LedgerEventLogStorage`): before a single-run backfill
starts, Dagster plans every asset for every partition, one ASSET_MATERIALIZATION_PLANNED event
each (45,660 for 25 years of five daily assets), and each check for every partition. Dagster hands
them over in batches, but dagster-postgres then stores each planned event on its own (an INSERT,
then an index transaction) and serializes a planned check's whole event again for every
partition. Here a batch of planned materializations is one INSERT plus one asset-table update per
asset, and a planned check is serialized once: the same rows, in the same order, as Dagster's own
path writes. The per-partition events stay, so a failed run still marks its days failed in the
UI (Dagster's DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS would write one event per asset and
lose that; docs/performance.md).

SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, on which dagster-postgres's `NOTIFY` statement
fails; the URL is therefore given to it with the psycopg2 dialect, which dagster-postgres installs.
The URL is read by libpq's parser first and refused, showing nothing past its scheme, if libpq
would misread it (see `redaction.py`); SQLAlchemy gets it rebuilt, the password escaped.
"""

from __future__ import annotations

import getpass
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagster import DagsterEventType
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._serdes import serialize_value
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine
from sqlalchemy.engine import URL, make_url

from ledger_backfill_dagster.lib.embedded_postgres import DAGSTER_DATABASE, embedded_server_uri
from ledger_backfill_dagster.lib.redaction import check_postgres_url, without_driver

if TYPE_CHECKING:
    # Dagster's own name for a configurable class's data (dagster-postgres types it so too).
    from dagster import EventLogEntry
    from dagster._core.events import AssetCheckEvaluationPlanned
    from dagster._serdes import ConfigurableClassData

EVENT_BATCH_SIZE = "1000"


def with_psycopg2_dialect(url: str, setting: str = "DAGSTER_PG_URL") -> str:
    """A libpq URL or key=value conninfo → a SQLAlchemy URL with the psycopg2 dialect.

    The value is read by libpq's own parser (after `check_postgres_url`, which refuses a value
    libpq would misread or quote in an error) and rebuilt with SQLAlchemy, which escapes the
    password itself: SQLAlchemy and libpq disagree on a raw / or # in a password.
    """
    info = check_postgres_url(setting, without_driver(url))
    user, password = info.pop("user", None), info.pop("password", None)
    if password is not None and not user:
        # SQLAlchemy renders no password without a user name: name libpq's default user.
        user = os.environ.get("PGUSER") or getpass.getuser()
    database = info.pop("dbname", None)
    host, port = info.pop("host", ""), info.pop("port", "")
    # A socket directory or several hosts go as libpq parameters; one TCP host in the URL.
    in_url = bool(host) and not host.startswith("/") and "," not in host
    if not in_url:
        info.update({k: v for k, v in (("host", host), ("port", port)) if v})
    return URL.create(
        "postgresql+psycopg2",
        username=user,
        password=password,
        host=host if in_url else None,
        port=int(port) if in_url and port else None,
        database=database,
        query=info,
    ).render_as_string(hide_password=False)


def with_async_commit(url: str) -> str:
    """The SQLAlchemy URL with `-c synchronous_commit=off` added to its libpq options."""
    parsed = make_url(url)
    options = str(parsed.query.get("options", ""))
    if "synchronous_commit" in options:
        return url
    query = {**parsed.query, "options": f"{options} -c synchronous_commit=off".strip()}
    return parsed.update_query_dict(query).render_as_string(hide_password=False)


def instance_postgres_url() -> str:
    for setting in ("DAGSTER_PG_URL", "DATABASE_URL"):
        if os.environ.get(setting):
            return with_async_commit(with_psycopg2_dialect(os.environ[setting], setting))
    return with_async_commit(with_psycopg2_dialect(embedded_server_uri(DAGSTER_DATABASE)))


_PLANNED = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
_BATCHED = {DagsterEventType.ASSET_MATERIALIZATION, _PLANNED}


class LedgerEventLogStorage(PostgresEventLogStorage):
    """dagster-postgres's event log, storing a run's planned events in batches (module docstring)."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # Runs of one event type, in order: planned and done materializations in one go, the
        # rest as dagster-postgres stores them.
        for event_type, run in itertools.groupby(events, key=lambda e: e.dagster_event_type):
            same_type = list(run)
            if len(same_type) > 1 and event_type in _BATCHED:
                self._store_asset_batch(same_type, every_asset=event_type == _PLANNED)
            else:
                super().store_event_batch(same_type)

    def _store_asset_batch(self, events: list[EventLogEntry], every_asset: bool) -> None:
        """What dagster-postgres does for a batch of materializations (one INSERT, then the tags
        and the asset table in one transaction), for planned ones too. The rows go as one
        executemany, which SQLAlchemy sends as multi-row INSERTs without compiling a statement
        of a thousand VALUES each time. The asset table keeps each asset's last event: for a
        batch of materializations dagster-postgres writes only the batch's last event to it (all
        of one asset); for planned events, each asset's last one."""
        rows = [self._event_to_row(event) for event in events]
        statement = SqlEventLogStorageTable.insert().returning(
            SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
        )
        with self._connect() as conn:
            event_ids = [int(row[0]) for row in conn.execute(statement, rows).fetchall()]
        last_of_asset: dict[Any, tuple[EventLogEntry, int]] = {}
        for event, event_id in zip(events, event_ids, strict=True):
            last_of_asset[event.get_dagster_event().asset_key if every_asset else None] = (
                event,
                event_id,
            )
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in last_of_asset.values():
                self._store_asset_event(conn, event, event_id)

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """Dagster's rows, one per partition, with the event serialized once, not per partition."""
        planned: AssetCheckEvaluationPlanned = event.get_dagster_event().event_specific_data  # type: ignore[assignment]
        subset = planned.partitions_subset
        partition_keys = subset.get_partition_keys() if subset else [None]
        serialized = serialize_value(event)
        timestamp = self._event_insert_timestamp(event)
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert(),
                [
                    dict(
                        asset_key=planned.asset_key.to_string(),
                        check_name=planned.check_name,
                        partition=partition_key,
                        run_id=event.run_id,
                        execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
                        evaluation_event=serialized,
                        evaluation_event_timestamp=timestamp,
                        evaluation_event_storage_id=event_id,
                    )
                    for partition_key in partition_keys
                ],
            )


class LedgerInstanceStorage(DagsterPostgresStorage):
    """dagster-postgres storage whose URL comes from the environment or the embedded server,
    with pooled connections."""

    def __init__(self, postgres_url: str, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(postgres_url, inst_data=inst_data)
        # dagster-postgres's own event log created the tables if needed; this one only writes.
        self._event_log_storage = LedgerEventLogStorage(
            postgres_url, should_autocreate_tables=False
        )
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            # The same engine dagster-postgres builds for its webserver, plus a liveness check.
            storage._engine = create_pg_engine(
                storage.postgres_url,
                None,
                isolation_level="AUTOCOMMIT",
                pool_size=1,
                max_overflow=3,
                pool_recycle=600,
                pool_pre_ping=True,
            )

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, object]
    ) -> LedgerInstanceStorage:
        return cls(instance_postgres_url(), inst_data=inst_data)
