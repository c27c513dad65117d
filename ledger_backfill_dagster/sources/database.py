"""The DATABASE Source Reader: a table or a query in another PostgreSQL database.

Scenarios 1 and 2 of the seed, and its SQL script over `ledger_entries_legacy`. For each partition
the reader asks only for the rows that can belong to that UTC day (`ts >= day AND ts < day + 1`
for a timestamptz, a widened window otherwise; capped at the run's start) through a server-side
cursor ordered by the integer key, and stages it page by page
(`paged_staging`), so memory holds one page whatever the table's size. The key becomes the staged
`source_row_id`, so the posting checkpoint's `last_processed_id` is the source's own id.

A transient error (lost connection, server restart) re-connects and continues after the last
staged id (keyset: `id > last`), up to BACKFILL_SOURCE_MAX_RETRIES times. Rows with no timestamp
or one before BACKFILL_START_DATE belong to no partition: they are returned as rejects, found by
one query over the whole source each run, so they are never silently left behind.

Columns map onto the entry contract like a CSV header: the snake_case names of `ledger_entries`
(the seed's legacy table), the canonical or legacy-export names, or a declared mapping
(BACKFILL_SOURCE_COLUMN_MAP / COLUMN_MAP_FILE). Other columns are folded into the metadata.
The timestamp column is a timestamptz, a naive timestamp or date, or text (issue 20). Every kind
is placed by the contract's own code, the one that reads CSV timestamps (`timestamps.parse_utc`;
a timestamptz as its UTC instant, exactly), never by the database session's cast: a naive
value is local time in SOURCE_TIMEZONE (a date is local midnight), so a local time skipped or
repeated by a DST change is a reject with the contract's reason, and a malformed text value is a
reject of that row alone. Such a column is read in a widened window (see `_day_where`) and each
row is kept only in the UTC day the contract places it in, so a row two windows read is staged
once. Rows no day can hold are found by one query over the whole source each run
(`_unpartitioned`) and are rejects of no partition, as in a CSV scan. The database URL is a
secret: it is never logged, and not part of the source id.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
from psycopg import sql
from tenacity import (
    RetryCallState,
    Retrying,
)

from ledger_backfill_dagster.entries.fields import raw_fields
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    LATER_THAN_RUN_START,
    parse_utc,
)
from ledger_backfill_dagster.lib.errors import (
    InputError,
    SettingsError,
    is_transient,
    transient_retrying,
)
from ledger_backfill_dagster.lib.http_client import SourceUnavailableError
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.sources.base import REJECT_COLUMNS, ExtractResult, SourceReader
from ledger_backfill_dagster.sources.csv_source import check_timezone
from ledger_backfill_dagster.sources.layout import Layout, LayoutError, detect_layout
from ledger_backfill_dagster.sources.paged_staging import (
    PartitionStaging,
    SourceStaging,
    canonical_row,
    staged_table,
)

log = logging.getLogger(__name__)
T = TypeVar("T")  # what a unit of work run by _with_retries returns

# PostgreSQL type OIDs the reader accepts for the key and the timestamp.
INTEGER_TYPES = {20: "bigint", 21: "smallint", 23: "integer"}
# How a timestamp column is read, by type: an instant (timestamptz); local time (timestamp,
# date); text (text, varchar, char).
AWARE, NAIVE, TEXT = "aware", "naive", "text"
DATE_TYPE = 1082
TIMESTAMP_KINDS = {1184: AWARE, 1114: NAIVE, DATE_TYPE: NAIVE, 25: TEXT, 1043: TEXT, 1042: TEXT}
# Slack added to the widest offsets the zone has around a day: its tz data (Python's) and the
# one pandas localizes with may differ by a rule change; an hour more costs a few rows per day.
WINDOW_MARGIN = timedelta(hours=1)
# A valid ISO 8601 timestamp as `parse_utc` reads it, every field in range (POSIX regex for
# PostgreSQL). A text value that does not match it may be malformed: the whole-source pass
# reads it and the contract decides. Days 29-31 are checked separately (by month).
STRICT_ISO = (
    "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.,][0-9]{1,9})?)?)?"
    "([zZ]|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?$"
)
# Month-days the strict shape admits that may not exist (February 29 outside leap years too).
DOUBTFUL_DAYS = ("02-29", "02-30", "02-31", "04-31", "06-31", "09-31", "11-31")
# pandas (and so the contract) represents no instant after 2262-04-11.
LAST_REPRESENTABLE_YEAR = "2262"
# Rejects of no partition read whole per query (by key), after the pass that finds them.
REJECTS_PER_QUERY = 10_000
# Value columns read other than as `::text` (OIDs of the row description's type_code).
MONEY_TYPE = 790
FLOAT_TYPES = {700: "real", 701: "double precision"}
# Fields that carry an amount or a rate: they must come from a column that holds them exactly.
EXACT_FIELDS = ("amount", "amountMinor", "fxRate")
# What to cast a float column to, per field, in the advice of the refusal.
EXACT_CASTS = {"amount": "numeric(20,2)", "amountMinor": "bigint", "fxRate": "numeric(20,10)"}
# Part of the staging fingerprint: a change in how values are read makes completed days be read
# again (days staged before issue 19 hold money columns in their locale text).
VALUE_READING = (
    "text; money as numeric (issue 19); timestamps by the contract, naive ones staged as local "
    "time (issue 20)"
)
NO_PARTITION_REASON = BEFORE_START_DATE
CURSOR_NAME = "ledger_backfill_source"


class DatabaseSourceError(InputError):
    """The table or query cannot serve as a source (missing column, wrong type, bad SQL)."""


@dataclass(frozen=True)
class _Shape:
    """The source's columns: key, timestamp, and what feeds each canonical field."""

    id_column: str
    timestamp_column: str
    layout: Layout
    # `money` columns: read as their numeric value, never as the locale's text.
    money_columns: frozenset[str] = frozenset()
    # AWARE (timestamptz), NAIVE (timestamp, date) or TEXT; `date` for a date column.
    timestamp_kind: str = AWARE
    timestamp_is_date: bool = False

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
        layout = self._layout([n for n in names if n != self.id_column])
        timestamp = self.timestamp_column or layout.column_for("timestampUtc")
        if timestamp not in types:
            raise DatabaseSourceError(f"the source has no timestamp column {timestamp!r}")
        if types[timestamp] not in TIMESTAMP_KINDS:
            raise DatabaseSourceError(
                f"timestamp column {timestamp!r} must be timestamptz, timestamp, date or text "
                "(text, varchar, char) to select a day"
            )
        _refuse_binary_floats(layout, types)
        money = frozenset(c for c in layout.fields_by_column if types.get(c) == MONEY_TYPE)
        return _Shape(
            self.id_column,
            timestamp,
            layout,
            money,
            TIMESTAMP_KINDS[types[timestamp]],
            types[timestamp] == DATE_TYPE,
        )

    def _layout(self, columns: list[str]) -> Layout:
        """The columns' layout; BACKFILL_SOURCE_TIMESTAMP_COLUMN stands in for a timestamp column
        no layout names (`created_at`), as if the column map had named it."""
        try:
            return detect_layout(columns, self.column_map)
        except LayoutError as exc:
            if not self.timestamp_column or self.timestamp_column not in columns:
                raise DatabaseSourceError(str(exc)) from exc
        declared = {**(self.column_map or {}), self.timestamp_column: "timestampUtc"}
        try:
            return detect_layout(columns, declared)
        except LayoutError as exc:
            raise DatabaseSourceError(str(exc)) from exc

    def _select(self, shape: _Shape, where: sql.Composable) -> sql.Composed:
        columns = [
            sql.SQL("src.{} AS __id").format(sql.Identifier(shape.id_column)),
            _timestamp_expression(shape),
            *[_value_expression(shape, c) for c in shape.value_columns],
        ]
        return sql.SQL("SELECT {} FROM {} AS src WHERE {} ORDER BY src.{}").format(
            sql.SQL(", ").join(columns), self._relation(), where, sql.Identifier(shape.id_column)
        )

    def _retrying(self) -> Retrying:
        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "database source: transient error, retry %d of %d: %s",
                state.attempt_number,
                self.max_retries,
                type(exc).__name__,
            )

        return transient_retrying(self.max_retries, self.retry_delay_ms, note)

    # -- extraction ---------------------------------------------------------------------------
    def extract(self, partition_keys: list[str], staging_root: Path) -> ExtractResult:
        check_timezone(self.source_timezone)
        run_start = datetime.now(UTC)
        staging = SourceStaging(staging_root / self.source_key, self.fingerprint())
        staged: dict[str, Path] = {}
        rows: dict[str, int] = {}
        pages = resumed = unchanged = 0
        try:
            shape = self._with_retries(lambda conn: self._shape(conn))
            # First, so that the days know the rows only an id can reach (`_Unplaced.strays`).
            unplaced = self._with_retries(lambda conn: self._unpartitioned(conn, shape, run_start))
            for key in partition_keys:
                day = self._day_where(shape, key, run_start, unplaced.strays.get(key, []))
                with staging.lock(key):
                    done = staging.completed(key)
                    if done and self._with_retries(partial(self._unchanged, day=day, state=done)):
                        unchanged += 1
                        rows[key] = int(done["rows"])
                        if rows[key]:
                            staged[key] = staging.final_dir(key)
                        continue
                    part = staging.open(key, run_start)
                    resumed += part.resumed
                    self._with_retries(
                        partial(self._stage, shape=shape, part=part, day=day, run_start=run_start)
                    )
                    location = part.finish()
                pages += part.pages
                rows[key] = part.rows
                if location is not None:
                    staged[key] = location
        except psycopg.Error as exc:
            if is_transient(exc):
                raise SourceUnavailableError(
                    "database source", self.max_retries + 1, redact(str(exc)).strip()
                ) from exc
            raise DatabaseSourceError(f"database source: {redact(str(exc)).strip()}") from exc
        rejects = unplaced.rejects
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
                "timestamp_read_as": shape.timestamp_kind,
                "layout": shape.layout.name,
                "pages": pages,
                "partitions_resumed": resumed,
                "partitions_unchanged": unchanged,
                **({"money_columns": sorted(shape.money_columns)} if shape.money_columns else {}),
            },
        )

    def _with_retries(self, work: Callable[[psycopg.Connection], T]) -> T:
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

    def _day_where(
        self, shape: _Shape, partition_key: str, run_start: datetime, strays: list[int]
    ) -> _DayWindow:
        """The rows a day's read asks for: every row that can belong to the UTC day, and more.

        - timestamptz: the UTC day itself (an instant needs no widening).
        - naive timestamp or date: the local times the UTC day spans in SOURCE_TIMEZONE,
          widened by the zone's smallest and largest offsets around the day (plus a margin),
          compared as naive values, so the column's own index serves it.
        - text: values whose leading `YYYY-MM-DD` is the day before, the day or the day after
          (an offset, stated or the zone's, moves an instant by less than a day), compared
          byte-wise (COLLATE "C", the order of ISO text), plus the rows the whole-source pass
          found that no prefix reaches (leading whitespace), by id.
        The contract then places each row read; only rows of this day are staged."""
        low, high = self._window(partition_key, run_start)
        ts = sql.Identifier(shape.timestamp_column)
        if shape.timestamp_kind == AWARE:
            where = sql.SQL("src.{} >= %(low)s AND src.{} < %(high)s").format(ts, ts)
            return _DayWindow(low, high, where, {"low": low, "high": high})
        if shape.timestamp_kind == NAIVE:
            local_low, local_high = _local_span(self.source_timezone, low, high)
            where = sql.SQL("src.{} >= %(low)s AND src.{} < %(high)s").format(ts, ts)
            return _DayWindow(low, high, where, {"low": local_low, "high": local_high})
        day = low.date()
        params: dict[str, object] = {
            "low": (day - timedelta(days=1)).isoformat(),
            "high": (day + timedelta(days=2)).isoformat(),
            "strays": strays,
        }
        where = sql.SQL(
            '((src.{ts} COLLATE "C" >= %(low)s AND src.{ts} COLLATE "C" < %(high)s)'
            " OR src.{key} = ANY(%(strays)s))"
        ).format(ts=ts, key=sql.Identifier(shape.id_column))
        return _DayWindow(low, high, where, params)

    def _unchanged(self, conn: psycopg.Connection, day: _DayWindow, state: dict) -> bool:
        """Does the day's window still hold the rows its completed read saw (count and highest
        id)? The window holds every row that can belong to the day, so a late row of the day
        changes one of them. Ledger rows are append-only; a row edited in place is not noticed
        (see docs/sources.md)."""
        probe = sql.SQL("SELECT count(*), max(src.{}) FROM {} AS src WHERE {}").format(
            sql.Identifier(self.id_column), self._relation(), day.where
        )
        count, highest = one_row(conn.execute(probe, day.params))
        conn.rollback()
        if "window_rows" not in state:  # a read made before windows were widened
            return False
        return count == int(state["window_rows"]) and highest == state.get("window_max")

    def _stage(
        self,
        conn: psycopg.Connection,
        shape: _Shape,
        part: PartitionStaging,
        day: _DayWindow,
        run_start: datetime,
    ) -> None:
        """Stream the day's window, ordered by key, after the last id already read; stage the
        rows the contract places in this day."""
        where, params = day.where, dict(day.params)
        after = part.resume
        if after is not None:
            where = sql.SQL("{} AND src.{} > %(after)s").format(
                where, sql.Identifier(shape.id_column)
            )
            params["after"] = after
        part.state.setdefault("window_rows", 0)
        part.state.setdefault("window_max", None)
        for page in self._pages(conn, self._select(shape, where), params):
            # A row without a reason has its UTC time (`_rows`): utc is None only beside one.
            placed = [
                row
                for row in self._rows(shape, page)
                if row.reason is None and day.low <= row.utc < day.high  # type: ignore[operator]
            ]
            part.state["window_rows"] = int(part.state["window_rows"]) + len(page)
            part.state["window_max"] = int(page[-1][0])
            part.write_page(staged_table(r.staged for r in placed), resume=int(page[-1][0]))

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

    def _rows(self, shape: _Shape, page: list[tuple]) -> list[_Row]:
        """Each record of a page as a staged row, with its UTC instant or the contract's reason
        why it has none. Every timestamp goes through `parse_utc`, as a CSV's does."""
        utc, reasons = self._instants(shape, [record[1] for record in page])
        mapped = shape.layout.fields_by_column
        columns = shape.value_columns
        source = self.table or "BACKFILL_SOURCE_QUERY"
        written_at = columns.index(shape.timestamp_column)
        rows = []
        for record, instant, reason in zip(page, utc, reasons, strict=True):
            key, values = int(record[0]), record[2:]
            written = values[written_at]  # the timestamp as PostgreSQL prints it
            fields: dict[str, str | None] = {}
            extras: dict[str, object] = {}
            for column, value in zip(columns, values, strict=True):
                target = mapped[column]
                if target is None:
                    if value is not None:
                        extras[column] = value
                elif target != "timestampUtc":
                    fields[target] = value
            fields["timestampUtc"] = _timestamp_field(shape, written, record[1], instant)
            staged = canonical_row(key, source, key, fields, extras or None, instant)
            rows.append(_Row(staged, instant, reason, written))
        return rows

    def _instants(
        self, shape: _Shape, stamps: list[object]
    ) -> tuple[list[datetime | None], list[str | None]]:
        """Every kind through the contract's parser (a timestamptz as UTC text with `Z`)."""
        parsed, reasons = parse_utc(pd.Series(stamps, dtype=object), self.source_timezone)
        instants = [None if pd.isna(p) else p.to_pydatetime() for p in parsed]
        return instants, [None if pd.isna(r) else str(r) for r in reasons]

    def _unpartitioned(
        self, conn: psycopg.Connection, shape: _Shape, run_start: datetime
    ) -> _Unplaced:
        """Rows that no day can hold, found by one query over the whole source each run: no
        timestamp, one before BACKFILL_START_DATE, and (naive and text columns) one the
        contract refuses. The query asks for a superset (`_unplaced_where`), key and timestamp
        only; `parse_utc` decides, so a row is a reject here exactly when no day's read would
        stage it; then only the rejects are read whole. Text rows the contract places in a day
        that no day's prefix window reaches are `strays`."""
        start = datetime.combine(date.fromisoformat(self.start_date), datetime.min.time(), UTC)
        where, params = self._unplaced_where(shape, start, run_start)
        unplaced = _Unplaced()
        reasons: dict[int, str] = {}
        for page in self._pages(conn, self._select_timestamps(shape, where), params):
            instants, why = self._instants(shape, [record[1] for record in page])
            for (key, _, written), instant, reason in zip(page, instants, why, strict=True):
                if reason is None and instant is not None and instant < start:
                    reason = NO_PARTITION_REASON
                elif reason is None and instant is not None and instant >= run_start:
                    # As a CSV scan says it; a run after that moment reads the row in its day
                    # (day windows end at the run's start, exclusive).
                    reason = LATER_THAN_RUN_START
                if reason is not None:
                    reasons[int(key)] = reason
                elif shape.timestamp_kind == TEXT and instant is not None:
                    unplaced.note_stray(int(key), instant, written)
        unplaced.rejects = self._rejects(conn, shape, reasons)
        return unplaced

    def _select_timestamps(self, shape: _Shape, where: sql.Composable) -> sql.Composed:
        """Key, timestamp as parsed and timestamp as printed of the rows `where` selects."""
        ts, key = sql.Identifier(shape.timestamp_column), sql.Identifier(shape.id_column)
        return sql.SQL(
            "SELECT src.{}, {}, src.{}::text FROM {} AS src WHERE {} ORDER BY src.{}"
        ).format(key, _timestamp_expression(shape), ts, self._relation(), where, key)

    def _rejects(
        self, conn: psycopg.Connection, shape: _Shape, reasons: dict[int, str]
    ) -> pd.DataFrame:
        """The rows `reasons` names, read whole, as rejects of no partition."""
        source = self.table or "BACKFILL_SOURCE_QUERY"
        keys = sorted(reasons)
        rejects: list[dict[str, object]] = []
        where = sql.SQL("src.{} = ANY(%(keys)s)").format(sql.Identifier(shape.id_column))
        for first in range(0, len(keys), REJECTS_PER_QUERY):
            chunk = {"keys": keys[first : first + REJECTS_PER_QUERY]}
            for page in self._pages(conn, self._select(shape, where), chunk):
                for row in self._rows(shape, page):
                    if shape.timestamp_kind != AWARE:  # a reject keeps the value as written
                        row.staged["timestampUtc"] = row.written
                    # the staged source_row_id is the int `_rows` put there
                    key = int(row.staged["source_row_id"])  # type: ignore[call-overload]
                    rejects.append(_reject(row.staged, source, reasons[key]))
        return pd.DataFrame(rejects, columns=REJECT_COLUMNS)

    def _unplaced_where(
        self, shape: _Shape, start: datetime, run_start: datetime
    ) -> tuple[sql.Composable, dict[str, object]]:
        """The whole-source query's condition: every row no day can hold, and a few that can."""
        ts = sql.Identifier(shape.timestamp_column)
        if shape.timestamp_kind == AWARE:
            where = sql.SQL(
                "src.{} IS NULL OR src.{} < %(start)s OR src.{} >= %(late)s OR src.{} = 'infinity'"
            ).format(ts, ts, ts, ts)
            return where, {"start": start, "late": run_start}
        gaps = _local_transitions(
            self.source_timezone, start - timedelta(days=1), run_start + timedelta(days=1)
        )
        if shape.timestamp_kind == NAIVE:
            # Local times before the start's latest local midnight may be before it in UTC.
            _, start_high = _local_span(self.source_timezone, start, start)
            # …and local times after the run start's earliest local time may be after it.
            late_low, _ = _local_span(self.source_timezone, run_start, run_start)
            parts = [
                sql.SQL("src.{} IS NULL").format(ts),
                sql.SQL("src.{} < %(start)s").format(ts),
                sql.SQL("src.{} > %(late)s").format(ts),
                sql.SQL("src.{} = 'infinity'").format(ts),
            ]
            params: dict[str, object] = {"start": start_high, "late": late_low}
            for n, (low, high) in enumerate(gaps):
                parts.append(
                    sql.SQL("(src.{ts} >= {low} AND src.{ts} < {high})").format(
                        ts=ts, low=sql.Placeholder(f"g{n}l"), high=sql.Placeholder(f"g{n}h")
                    )
                )
                params[f"g{n}l"], params[f"g{n}h"] = low, high
            return sql.SQL(" OR ").join(parts), params
        # Text: the contract's whole grammar is not SQL's, so ask for every value the strict
        # shape does not vouch for; every day a DST change touches (naive text only differs
        # from the shape there); and the start's neighbourhood.
        c = sql.SQL('src.{} COLLATE "C"').format(ts)
        parts = [
            sql.SQL("src.{} IS NULL").format(ts),
            sql.SQL("src.{}::text !~ %(shape)s").format(ts),
            sql.SQL("substr(src.{}::text, 6, 5) = ANY(%(doubtful)s)").format(ts),
            sql.SQL("{} < %(start)s").format(c),
            sql.SQL("{} >= %(late)s").format(c),
            sql.SQL("{} >= %(last)s").format(c),
        ]
        params = {
            "shape": STRICT_ISO,
            "doubtful": list(DOUBTFUL_DAYS),
            "start": (start.date() + timedelta(days=1)).isoformat(),
            "late": (run_start.date() - timedelta(days=1)).isoformat(),
            "last": LAST_REPRESENTABLE_YEAR,
        }
        for n, (low, high) in enumerate(gaps):
            parts.append(
                sql.SQL("({c} >= {low} AND {c} < {high})").format(
                    c=c, low=sql.Placeholder(f"g{n}l"), high=sql.Placeholder(f"g{n}h")
                )
            )
            params[f"g{n}l"] = low.date().isoformat()
            params[f"g{n}h"] = (high.date() + timedelta(days=1)).isoformat()
        return sql.SQL(" OR ").join(parts), params


@dataclass(frozen=True)
class _DayWindow:
    """One day's read: its UTC bounds, and the condition and parameters that select it."""

    low: datetime
    high: datetime
    where: sql.Composable
    params: dict[str, object]


@dataclass(frozen=True)
class _Row:
    staged: dict[str, object]
    utc: datetime | None
    reason: str | None
    written: object = None  # the timestamp column's value as PostgreSQL prints it (`::text`)


@dataclass
class _Unplaced:
    """What the whole-source pass found: rejects of no partition, and text rows of a day that
    its prefix window cannot reach (by day, their ids)."""

    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS))
    strays: dict[str, list[int]] = field(default_factory=dict)

    def note_stray(self, key: int, instant: datetime, written: str | None) -> None:
        day = instant.date()
        text = written or ""
        low, high = str(day - timedelta(days=1)), str(day + timedelta(days=2))
        if not low <= text < high:  # Python compares code points: the order of COLLATE "C"
            self.strays.setdefault(day.isoformat(), []).append(key)


def _reject(row: dict[str, object], source: str, reason: str) -> dict[str, object]:
    raw = raw_fields(row)
    if row["extra_columns"]:
        raw.update(json.loads(str(row["extra_columns"])))
    return {
        "source_row_id": row["source_row_id"],
        "source_file": source,
        "line_number": row["line_number"],
        "raw_text": None,
        "raw_row": json.dumps(raw, ensure_ascii=False),
        "reasons": [reason],
    }


def _timestamp_expression(shape: _Shape) -> sql.Composable:
    """The timestamp as text for the contract's parser: a timestamptz as its UTC instant with
    `Z`; a naive timestamp or date as ISO local time (to_char: the same whatever the session's
    DateStyle; `infinity` as itself, which the contract refuses); text as it is."""
    ts = sql.Identifier(shape.timestamp_column)
    if shape.timestamp_kind == TEXT:
        return sql.SQL("src.{}::text AS __ts").format(ts)
    value = sql.SQL("src.{}").format(ts)
    pattern = 'YYYY-MM-DD"T"HH24:MI:SS.US'
    if shape.timestamp_kind == AWARE:
        value = sql.SQL("(src.{} AT TIME ZONE 'UTC')").format(ts)
        pattern += '"Z"'
    elif shape.timestamp_is_date:
        pattern = "YYYY-MM-DD"
    return sql.SQL(
        "CASE WHEN isfinite(src.{ts}) THEN to_char({value}, {pattern}) ELSE src.{ts}::text END"
        " AS __ts"
    ).format(ts=ts, value=value, pattern=sql.Literal(pattern))


def _timestamp_field(
    shape: _Shape, written: object, parsed_text: object, instant: datetime | None
) -> str | None:
    """The staged `timestampUtc`, which a row's identity takes as written (`row_identity`):
    text as written, as a CSV stages it; a naive timestamp or date as its local time in ISO
    (`_timestamp_expression`), so that changing SOURCE_TIMEZONE leaves the row the same source
    row (its new instant is then held as a conflict, never posted as another row); a timestamptz
    as its UTC instant; the value as PostgreSQL prints it when the contract could not place it."""
    if shape.timestamp_kind == TEXT or instant is None:
        return None if written is None else str(written)
    if shape.timestamp_kind == NAIVE:
        return str(parsed_text)
    return instant.isoformat()


def _offsets(zone: ZoneInfo, low: datetime, high: datetime) -> list[timedelta]:
    """The zone's UTC offsets at `low`, `high` and every quarter of an hour between."""
    step, moment, offsets = timedelta(minutes=15), low, []
    while moment < high:
        offsets.append(moment.astimezone(zone).utcoffset() or timedelta(0))
        moment += step
    offsets.append(high.astimezone(zone).utcoffset() or timedelta(0))
    return offsets


def _local_span(timezone: str, low: datetime, high: datetime) -> tuple[datetime, datetime]:
    """Naive local bounds holding every local time whose instant is in [low, high): the UTC
    bounds moved by the zone's smallest and largest offsets over them, widened by a margin."""
    offsets = _offsets(ZoneInfo(timezone), low, high)
    local_low = low + min(offsets) - WINDOW_MARGIN
    local_high = high + max(offsets) + WINDOW_MARGIN
    return local_low.replace(tzinfo=None), local_high.replace(tzinfo=None)


def _local_transitions(timezone: str, low: datetime, high: datetime) -> list[tuple]:
    """Naive local ranges around each offset change of the zone between `low` and `high` (UTC):
    the local times a change skips or repeats, widened by the margin on both sides."""
    zone = ZoneInfo(timezone)
    hour, moment, ranges = timedelta(hours=1), low, []
    before = moment.astimezone(zone).utcoffset()
    while moment < high:
        after = (moment + hour).astimezone(zone).utcoffset()
        if after != before and before is not None and after is not None:
            local = (moment + hour).replace(tzinfo=None)
            first, last = local + min(before, after) - hour, local + max(before, after)
            ranges.append((first - WINDOW_MARGIN, last + WINDOW_MARGIN))
        moment, before = moment + hour, after
    return ranges


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
