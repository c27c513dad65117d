"""The DATABASE Source Reader: a table or a query in another PostgreSQL database.

Scenarios 1 and 2 of the seed, and its SQL script over `ledger_entries_legacy`. For each partition
the reader asks only for that UTC day (`ts >= day AND ts < day + 1`, capped at the run's start)
through a server-side cursor ordered by the integer key, and stages it page by page
(`paged_staging`), so memory holds one page whatever the table's size. The key becomes the staged
`source_row_id`, so the posting checkpoint's `last_processed_id` is the source's own id.

A transient error (lost connection, server restart) re-connects and continues after the last
staged id (keyset: `id > last`), up to BACKFILL_SOURCE_MAX_RETRIES times. Rows with no timestamp
or one before BACKFILL_START_DATE belong to no partition: they are returned as rejects, found by
one query over the whole source each run, so they are never silently left behind.

Columns map onto the entry contract like a CSV header: the snake_case names of `ledger_entries`
(the seed's legacy table), the canonical or legacy-export names, or a declared mapping
(BACKFILL_SOURCE_COLUMN_MAP / COLUMN_MAP_FILE). Other columns are folded into the metadata.
The timestamp column must be a timestamp, timestamptz or date; a naive timestamp is read in
SOURCE_TIMEZONE. The database URL is a secret: it is never logged, and not part of the source id.

Values are read as PostgreSQL prints them (`::text`), which is exact for NUMERIC of any scale,
integers and text; the contract judges amounts by value, so `56722.710000000000000000` from a
NUMERIC(38,18) column is 56722.71. Two types are different (issue 19): `money` prints in the
session's lc_monetary format (`$1,234.50`), so its numeric value is read instead; and a `real` or
`double precision` column feeding an amount or a rate is refused before any row is read, because
a binary float cannot hold most decimal fractions. Column types come from the LIMIT 0 probe's
row description, which reports a domain as its base type, so domains over these types are
covered without looking them up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from ledger_backfill_dagster.ledger.posting import is_transient
from ledger_backfill_dagster.resources.ledger_database import redact
from ledger_backfill_dagster.settings import SettingsError
from ledger_backfill_dagster.sources.base import REJECT_COLUMNS, ExtractResult, SourceReader
from ledger_backfill_dagster.sources.http_client import SourceUnavailableError
from ledger_backfill_dagster.sources.layout import (
    Layout,
    LayoutError,
    detect_layout,
    raw_fields,
)
from ledger_backfill_dagster.sources.paged_staging import (
    PartitionStaging,
    SourceStaging,
    canonical_row,
    staged_table,
)

log = logging.getLogger(__name__)

# PostgreSQL type OIDs the reader accepts for the key and the timestamp.
INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer"}
TIME_TYPES = {1184: "timestamptz", 1114: "timestamp", 1082: "date"}
# Value columns read other than as `::text` (OIDs of the row description's type_code).
MONEY_TYPE = 790
FLOAT_TYPES = {700: "real", 701: "double precision"}
# Fields that carry an amount or a rate: they must come from a column that holds them exactly.
EXACT_FIELDS = ("amount", "amountMinor", "fxRate")
# What to cast a float column to, per field, in the advice of the refusal.
EXACT_CASTS = {"amount": "numeric(20,2)", "amountMinor": "bigint", "fxRate": "numeric(20,10)"}
# Part of the staging fingerprint: a change in how values are read makes completed days be read
# again (days staged before issue 19 hold money columns in their locale text).
VALUE_READING = "text; money as numeric (issue 19)"
NO_PARTITION_REASON = "timestampUtc: before BACKFILL_START_DATE (belongs to no partition)"
EMPTY_TIMESTAMP_REASON = "timestampUtc: empty"
CURSOR_NAME = "ledger_backfill_source"


class DatabaseSourceError(ValueError):
    """The table or query cannot serve as a source (missing column, wrong type, bad SQL)."""


@dataclass(frozen=True)
class _Shape:
    """The source's columns: key, timestamp, and what feeds each canonical field."""

    id_column: str
    timestamp_column: str
    layout: Layout
    # `money` columns: read as their numeric value, never as the locale's text.
    money_columns: frozenset[str] = frozenset()

    @property
    def value_columns(self) -> list[str]:
        """Every column but the key, in source order: mapped fields and extras."""
        return list(self.layout.fields_by_column)


@dataclass
class DatabaseSource(SourceReader):
    url: str = field(repr=False)
    table: str | None = None
    query: str | None = None
    id_column: str = "id"
    timestamp_column: str | None = None
    column_map: dict[str, str] | None = None
    start_date: str = "2024-01-01"
    source_timezone: str = "UTC"
    page_size: int = 5000
    timeout_seconds: float = 30.0
    max_retries: int = 5
    retry_delay_ms: int = 1000
    explicit_source_id: str | None = None
    source_type: str = "DATABASE"

    def __post_init__(self) -> None:
        if bool(self.table) == bool(self.query):
            raise SettingsError(
                "a DATABASE source needs exactly one of BACKFILL_SOURCE_TABLE or "
                "BACKFILL_SOURCE_QUERY"
            )

    # -- identity -----------------------------------------------------------------------------
    @property
    def source_id(self) -> str:
        """Names the source in checkpoints and lineage: server, database and table (or a hash
        of the query); never the user or password."""
        if self.explicit_source_id:
            return self.explicit_source_id
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        host = info.get("host") or "localhost"
        where = f"{host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
        what = self.table or "query:" + hashlib.sha1(str(self.query).encode()).hexdigest()[:12]
        return f"database:{where}/{what}"

    def fingerprint(self) -> str:
        """Everything that changes what a staged row holds (not the URL: it is a secret)."""
        parts = [
            self.table,
            self.query,
            self.id_column,
            self.timestamp_column,
            json.dumps(self.column_map, sort_keys=True),
            self.source_timezone,
            self.start_date,
            VALUE_READING,
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    # -- connection ---------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection:
        conn = psycopg.connect(
            self.url,
            connect_timeout=max(1, int(self.timeout_seconds)),
            application_name="ledger_backfill_source",
        )
        conn.execute("SELECT set_config('TimeZone', %s, false)", (self.source_timezone,))
        conn.commit()
        return conn

    def _relation(self) -> sql.Composable:
        if self.table:
            return sql.Identifier(*self.table.split("."))
        # The query is configuration, not data; '%' is escaped so psycopg leaves it alone.
        text = str(self.query).strip().rstrip(";").replace("%", "%%")
        return sql.SQL("({})").format(sql.SQL(text))

    def _shape(self, conn: psycopg.Connection) -> _Shape:
        probe = sql.SQL("SELECT * FROM {} AS src LIMIT 0").format(self._relation())
        try:
            with conn.cursor() as cur:
                cur.execute(probe)
                described = [(c.name, c.type_code) for c in cur.description or []]
            conn.rollback()
        except psycopg.Error as exc:
            conn.rollback()
            if is_transient(exc):
                raise
            raise DatabaseSourceError(
                f"cannot read {self.table or 'BACKFILL_SOURCE_QUERY'}: {redact(str(exc)).strip()}"
            ) from exc
        types = dict(described)
        names = [name for name, _ in described]
        if self.id_column not in types:
            raise DatabaseSourceError(
                f"the source has no key column {self.id_column!r} (BACKFILL_SOURCE_ID_COLUMN); "
                f"columns: {names}"
            )
        if types[self.id_column] not in INTEGER_TYPES:
            raise DatabaseSourceError(
                f"key column {self.id_column!r} must be an integer column: keyset pages and "
                "checkpoints use it"
            )
        try:
            layout = detect_layout([n for n in names if n != self.id_column], self.column_map)
        except LayoutError as exc:
            raise DatabaseSourceError(str(exc)) from exc
        timestamp = self.timestamp_column or layout.column_for("timestampUtc")
        if timestamp not in types:
            raise DatabaseSourceError(f"the source has no timestamp column {timestamp!r}")
        if types[timestamp] not in TIME_TYPES:
            raise DatabaseSourceError(
                f"timestamp column {timestamp!r} must be timestamptz, timestamp or date to select "
                "a day; cast it in BACKFILL_SOURCE_QUERY"
            )
        _refuse_binary_floats(layout, types)
        money = frozenset(c for c in layout.fields_by_column if types.get(c) == MONEY_TYPE)
        return _Shape(self.id_column, timestamp, layout, money)

    def _select(self, shape: _Shape, where: sql.Composable) -> sql.Composed:
        columns = [
            sql.SQL("src.{} AS __id").format(sql.Identifier(shape.id_column)),
            sql.SQL("src.{}::timestamptz AS __ts").format(sql.Identifier(shape.timestamp_column)),
            *[_value_expression(shape, c) for c in shape.value_columns],
        ]
        return sql.SQL("SELECT {} FROM {} AS src WHERE {} ORDER BY src.{}").format(
            sql.SQL(", ").join(columns), self._relation(), where, sql.Identifier(shape.id_column)
        )

    def _retrying(self) -> Retrying:
        delay = self.retry_delay_ms / 1000

        def note(state) -> None:  # type: ignore[no-untyped-def]
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "database source: transient error, retry %d of %d: %s",
                state.attempt_number,
                self.max_retries,
                type(exc).__name__,
            )

        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential_jitter(initial=delay, max=max(delay * 16, 1), jitter=delay / 2),
            before_sleep=note,
            reraise=True,
        )

    # -- extraction ---------------------------------------------------------------------------
    def extract(self, partition_keys: list[str], staging_root: Path) -> ExtractResult:
        run_start = datetime.now(UTC)
        staging = SourceStaging(staging_root / self.source_key, self.fingerprint())
        staged: dict[str, Path] = {}
        rows: dict[str, int] = {}
        pages = resumed = unchanged = 0
        try:
            shape = self._with_retries(lambda conn: self._shape(conn))
            for key in partition_keys:
                with staging.lock(key):
                    done = staging.completed(key)
                    if done and self._with_retries(
                        lambda conn, d=done: self._unchanged(conn, shape, d, run_start)
                    ):
                        unchanged += 1
                        rows[key] = int(done["rows"])
                        if rows[key]:
                            staged[key] = staging.final_dir(key)
                        continue
                    part = staging.open(key, run_start)
                    resumed += part.resumed
                    self._with_retries(lambda conn, p=part: self._stage(conn, shape, p, run_start))
                    location = part.finish()
                pages += part.pages
                rows[key] = part.rows
                if location is not None:
                    staged[key] = location
            rejects = self._with_retries(lambda conn: self._unpartitioned(conn, shape))
        except psycopg.Error as exc:
            if is_transient(exc):
                raise SourceUnavailableError(
                    "database source", self.max_retries + 1, redact(str(exc)).strip()
                ) from exc
            raise DatabaseSourceError(f"database source: {redact(str(exc)).strip()}") from exc
        return ExtractResult(
            source_id=self.source_id,
            source_type=self.source_type,
            staged=staged,
            rows_by_partition=rows,
            unpartitioned_rejects=rejects,
            rows_read=sum(rows.values()) + len(rejects),
            details={
                "relation": self.table or "BACKFILL_SOURCE_QUERY",
                "key_column": shape.id_column,
                "timestamp_column": shape.timestamp_column,
                "layout": shape.layout.name,
                "pages": pages,
                "partitions_resumed": resumed,
                "partitions_unchanged": unchanged,
                **({"money_columns": sorted(shape.money_columns)} if shape.money_columns else {}),
            },
        )

    def _with_retries(self, work):  # type: ignore[no-untyped-def]
        """Run `work(conn)` on a fresh connection, again after a transient error."""
        for attempt in self._retrying():
            with attempt, self.connect() as conn:
                return work(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _window(partition_key: str, run_start: datetime) -> tuple[datetime, datetime]:
        """The UTC day, capped at the run's start: later rows are left for a later run."""
        low = datetime.combine(date.fromisoformat(partition_key), datetime.min.time(), UTC)
        return low, min(low + timedelta(days=1), run_start)

    def _unchanged(
        self, conn: psycopg.Connection, shape: _Shape, state: dict, run_start: datetime
    ) -> bool:
        """Does the day still hold the rows its completed staging holds (count and highest id)?
        Ledger rows are append-only; a row edited in place is not noticed (see docs/sources.md)."""
        low, high = self._window(str(state["partition_key"]), run_start)
        ts, key = sql.Identifier(shape.timestamp_column), sql.Identifier(shape.id_column)
        probe = sql.SQL(
            "SELECT count(*), max(src.{}) FROM {} AS src WHERE src.{} >= %s AND src.{} < %s"
        ).format(key, self._relation(), ts, ts)
        count, highest = conn.execute(probe, (low, high)).fetchone()
        conn.rollback()
        return count == int(state["rows"]) and highest == state.get("resume")

    def _stage(
        self, conn: psycopg.Connection, shape: _Shape, part: PartitionStaging, run_start: datetime
    ) -> None:
        """Stream one day, ordered by key, after the last id already staged."""
        low, high = self._window(str(part.state["partition_key"]), run_start)
        ts, key = sql.Identifier(shape.timestamp_column), sql.Identifier(shape.id_column)
        where = sql.SQL("src.{} >= %(low)s AND src.{} < %(high)s").format(ts, ts)
        after = part.resume
        if after is not None:
            where = sql.SQL("{} AND src.{} > %(after)s").format(where, key)
        params = {"low": low, "high": high, "after": after}
        for page in self._pages(conn, self._select(shape, where), params):
            table = staged_table(self._rows(shape, page))
            part.write_page(table, resume=int(page[-1][0]))

    def _pages(
        self, conn: psycopg.Connection, statement: sql.Composed, params: dict
    ) -> Iterator[list[tuple]]:
        """A named (server-side) cursor in a read-only transaction, `page_size` rows at a time."""
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            with conn.cursor(name=CURSOR_NAME) as cur:
                cur.itersize = self.page_size
                cur.execute(statement, params)
                while page := cur.fetchmany(self.page_size):
                    yield page

    def _rows(self, shape: _Shape, page: list[tuple]) -> Iterator[dict[str, object]]:
        mapped = shape.layout.fields_by_column
        columns = shape.value_columns
        source = self.table or "BACKFILL_SOURCE_QUERY"
        for record in page:
            key, ts, values = int(record[0]), record[1], record[2:]
            fields: dict[str, str | None] = {}
            extras: dict[str, object] = {}
            for column, value in zip(columns, values, strict=True):
                target = mapped[column]
                if target is None:
                    if value is not None:
                        extras[column] = value
                elif target == "timestampUtc":
                    fields[target] = ts.astimezone(UTC).isoformat() if ts is not None else value
                else:
                    fields[target] = value
            yield canonical_row(
                key, source, key, fields, extras or None, ts.astimezone(UTC) if ts else None
            )

    def _unpartitioned(self, conn: psycopg.Connection, shape: _Shape) -> pd.DataFrame:
        """Rows that no day can hold: no timestamp, or one before BACKFILL_START_DATE."""
        ts = sql.Identifier(shape.timestamp_column)
        where = sql.SQL("src.{} IS NULL OR src.{} < %(start)s").format(ts, ts)
        start = datetime.combine(date.fromisoformat(self.start_date), datetime.min.time(), UTC)
        source = self.table or "BACKFILL_SOURCE_QUERY"
        rejects: list[dict[str, object]] = []
        for page in self._pages(conn, self._select(shape, where), {"start": start}):
            for row in self._rows(shape, page):
                raw = raw_fields(row)
                if row["extra_columns"]:
                    raw.update(json.loads(str(row["extra_columns"])))
                reason = NO_PARTITION_REASON if row["timestamp_utc"] else EMPTY_TIMESTAMP_REASON
                rejects.append(
                    {
                        "source_row_id": row["source_row_id"],
                        "source_file": source,
                        "line_number": row["line_number"],
                        "raw_text": None,
                        "raw_row": json.dumps(raw, ensure_ascii=False),
                        "reasons": [reason],
                    }
                )
        return pd.DataFrame(rejects, columns=REJECT_COLUMNS)


def _value_expression(shape: _Shape, column: str) -> sql.Composable:
    """How one value column is selected: as PostgreSQL prints it, which is exact for NUMERIC,
    integers and text; a `money` column as its numeric value, because `money::text` is the
    locale's format (`$1,234.50`, `1.234,50 €`), which no contract reads as an amount."""
    if column in shape.money_columns:
        return sql.SQL("src.{}::numeric::text").format(sql.Identifier(column))
    return sql.SQL("src.{}::text").format(sql.Identifier(column))


def _refuse_binary_floats(layout: Layout, types: dict[str, int]) -> None:
    """A real or double precision column cannot feed an amount or a rate: a binary float holds
    most decimal fractions only approximately (0.10 is 0.1000000000000000055…), so which cents it
    meant is a guess. Refused from the row description, before any row is read; the user can
    accept the rounding explicitly with a cast. Float columns that only go to metadata are kept."""
    for column, target in layout.fields_by_column.items():
        type_name = FLOAT_TYPES.get(types.get(column, 0))
        if target not in EXACT_FIELDS or type_name is None:
            continue
        name = _sql_name(column)
        raise DatabaseSourceError(
            f"column {column!r} is {type_name} and feeds {target}: a binary floating-point "
            "column cannot carry an amount exactly (0.10 is stored as 0.1000000000000000055…), "
            "so no row was read. If you accept rounding its values, cast it in "
            f"BACKFILL_SOURCE_QUERY, e.g. SELECT …, {name}::{EXACT_CASTS[target]} AS {name} … "
            "(with the scale your amounts are meant to have)"
        )


def _sql_name(column: str) -> str:
    """The column as it would be written in SQL: quoted unless it is a plain lower-case name."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", column):
        return column
    return '"' + column.replace('"', '""') + '"'
