"""The API Source Reader: a paginated JSON HTTP API, read one UTC day at a time.

The page format (docs/sources.md has the full description):

    GET {BACKFILL_SOURCE_URL}/entries?from=2024-01-05T00:00:00Z&to=2024-01-06T00:00:00Z&limit=N
        [&cursor=C]                                  Authorization: Bearer {BACKFILL_API_TOKEN}
    200 {"entries": [{"id": 17, "ledgerId": ..., "debitAccountId": ..., "creditAccountId": ...,
                      "amount": "12.50", "currencyCode": "USD", "assetType": "fiat",
                      "transactionType": ..., "referenceId": ..., "timestampUtc": ...,
                      "fxRate": null, "metadata": {...}}, ...],
         "next_cursor": "opaque" | null}

`from` is inclusive, `to` exclusive; `id` is the entry's integer id at the source, unique within
the source: it becomes the staged `source_row_id` and so the checkpoint's `last_processed_id`.
Other keys of an entry are folded into its metadata, or renamed by BACKFILL_SOURCE_COLUMN_MAP.

Transient failures are retried (`http_client`); a page that breaks the format fails the run naming
the page and what is wrong with it: never skipped. Pages are staged as they arrive
(`paged_staging`), so after a fix the re-run continues from the page that failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pandas as pd

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    LATER_THAN_RUN_START,
    parse_utc,
)
from ledger_backfill_dagster.lib.http_client import (
    JsonHttpClient,
    MalformedPageError,
    RetrySettings,
)
from ledger_backfill_dagster.sources.base import ExtractResult, SourceReader
from ledger_backfill_dagster.sources.paged_staging import (
    PartitionStaging,
    SourceStaging,
    canonical_row,
    staged_table,
)

# A well-shaped timestamp pandas cannot hold (years before 1677 or after 2262) is outside any
# day window a page is asked for: a broken page, as any entry outside the window is.
OUT_OF_RANGE = (LATER_THAN_RUN_START, BEFORE_START_DATE)
# Places a JSON number is written out to in plain digits (PostgreSQL NUMERIC's largest scale).
MAX_PLAIN_PLACES = 16_383
# Part of the staging fingerprint: how values are staged (a read interrupted before issue 20,
# which expanded JSON numbers, is started afresh instead of resumed).
VALUE_READING = "JSON numbers as written (issue 20)"


@dataclass
class Page:
    """One fetched page, already checked against the format: canonical entries and what next."""

    label: str
    entries: list[tuple[int, dict[str, str | None], dict[str, object]]]  # (id, fields, extras)
    next_resume: object | None
    last: bool


def field_text(value: object) -> str | None:
    """A JSON value as the text a canonical field holds: a string as given, a number as its
    exact value in plain digits (`10.000`, `0.000000000000000001`), anything else as its JSON
    text (`true`, an object). See `number_text` for numbers written with an exponent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json_text(value)


def json_text(value: object) -> str:
    """JSON text for what the page's parser gave: numbers as `number_text` writes them,
    strings with non-ASCII escaped (an unpaired surrogate stays a `\\ud800` escape the
    contract can name), and NaN or Infinity, which Python's parser lets through, written back
    as the invalid JSON they were."""
    if isinstance(value, Decimal):
        return number_text(value)
    if isinstance(value, dict):
        members = (f"{json.dumps(str(k))}:{json_text(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    return json.dumps(value)


def number_text(value: Decimal) -> str:
    """A parsed JSON number as text: as it was written when the parser kept that
    (`http_client.WrittenNumber`: `1500.00`, `15e-1`, `1e3`), so the contract judges it exactly
    as it judges the same text in a CSV (an exponent is refused in both). Otherwise its exact
    value, in plain digits when it has no positive exponent, up to NUMERIC's 16,383 places."""
    written = getattr(value, "written", None)
    if written is not None:
        return written
    if not value.is_finite():
        return json.dumps(float(value))
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -MAX_PLAIN_PLACES <= exponent <= 0:
        return format(value, "f")
    return str(value)


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_id(entry: dict, key: str, page: str, position: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedPageError(
            page, f"entry {position}: {key!r} must be a non-negative integer, got {value!r}"
        )
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(label: str, row_id: int, fields: dict[str, str | None]) -> None:
    """A JSON string may escape half of a UTF-16 pair (`"\\ud800"`); no text column can hold
    it, nor can the staged (UTF-8) frame. In a text field it is a broken page, named with its
    entry and field (the CSV equivalent, bytes that are not UTF-8, is a malformed line). In
    metadata or an extra key it stays an escape and the contract rejects the row."""
    for name, value in fields.items():
        if value is not None and _SURROGATE.search(value):
            raise MalformedPageError(
                label,
                f"entry id {row_id}: {name!r} holds an unpaired UTF-16 surrogate, which no "
                "text can store",
            )


@dataclass
class PagedHttpSource(SourceReader):
    """What the API and SCB readers share: per-day paging, staging, resume, checks."""

    base_url: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    start_date: str = "2024-01-01"
    source_timezone: str = "UTC"
    page_size: int = 1000
    timeout_seconds: float = 30.0
    max_retries: int = 5
    retry_delay_ms: int = 1000
    max_retry_after: float = 120.0
    explicit_source_id: str | None = None

    def client(self) -> JsonHttpClient:
        return JsonHttpClient(
            self.base_url,
            self.token,
            timeout=self.timeout_seconds,
            retry=RetrySettings(
                max_retries=self.max_retries,
                initial_delay=self.retry_delay_ms / 1000,
                max_delay=max(self.retry_delay_ms / 1000 * 32, 1.0),
                max_retry_after=self.max_retry_after,
            ),
        )

    def where(self) -> str:
        """The base URL without credentials, query or fragment: safe to show."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"

    @abstractmethod
    def selection(self) -> object:
        """What, besides the URL, decides which rows the pages hold (part of the fingerprint)."""

    def fingerprint(self) -> str:
        # The page size is part of it: a saved cursor or page number only means the same rows at
        # the same size.
        parts = [
            self.where(),
            self.selection(),
            self.source_timezone,
            self.page_size,
            VALUE_READING,
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    @abstractmethod
    def fetch_page(
        self,
        client: JsonHttpClient,
        partition_key: str,
        window: tuple[datetime, datetime],
        resume: object | None,
        number: int,
    ) -> Page: ...

    def extract(self, partition_keys: list[str], staging_root: Path) -> ExtractResult:
        run_start = datetime.now(UTC)
        staging = SourceStaging(staging_root / self.source_key, self.fingerprint())
        staged: dict[str, Path] = {}
        rows: dict[str, int] = {}
        pages = resumed = 0
        with self.client() as client:
            for key in partition_keys:
                with staging.lock(key):
                    part = staging.open(key, run_start)
                    resumed += part.resumed
                    self._stage(client, key, part)
                    location = part.finish()
                pages += part.pages
                rows[key] = part.rows
                if location is not None:
                    staged[key] = location
            requests, retries = client.requests, client.retries
        return ExtractResult(
            source_id=self.source_id,
            source_type=self.source_type,
            staged=staged,
            rows_by_partition=rows,
            rows_read=sum(rows.values()),
            details={
                "endpoint": self.where(),
                "pages": pages,
                "requests": requests,
                "transient_retries": retries,
                "partitions_resumed": resumed,
            },
        )

    def _stage(self, client: JsonHttpClient, key: str, part: PartitionStaging) -> None:
        low = datetime.combine(date.fromisoformat(key), datetime.min.time(), UTC)
        window = (low, low + timedelta(days=1))
        seen = part.staged_ids() if part.resumed else set()
        if part.state.get("exhausted"):
            return
        resume, number = part.resume, part.pages + 1
        while True:
            page = self.fetch_page(client, key, window, resume, number)
            table = staged_table(self._rows(page, window, seen))
            part.state["exhausted"] = page.last
            part.write_page(table, resume=page.next_resume)
            if page.last:
                return
            resume, number = page.next_resume, number + 1

    def _rows(
        self, page: Page, window: tuple[datetime, datetime], seen: set[int]
    ) -> list[dict[str, object]]:
        stamps = pd.Series([fields.get("timestampUtc") for _, fields, _ in page.entries])
        parsed, reasons = parse_utc(stamps, self.source_timezone)
        low, high = (pd.Timestamp(w) for w in window)
        rows = []
        for (row_id, fields, extras), moment, reason in zip(
            page.entries, parsed, reasons, strict=True
        ):
            if row_id in seen:
                raise MalformedPageError(
                    page.label, f"entry id {row_id} was already served for this day"
                )
            seen.add(row_id)
            stamp = None if pd.isna(moment) else moment
            outside = reason in OUT_OF_RANGE or (stamp is not None and not low <= stamp < high)
            if outside:
                raise MalformedPageError(
                    page.label,
                    f"entry id {row_id}: timestampUtc {fields.get('timestampUtc')!r} is outside "
                    f"the requested window [{utc_iso(window[0])}, {utc_iso(window[1])})",
                )
            # A timestamp that cannot be read (empty, not ISO 8601, a local time SOURCE_TIMEZONE
            # skips or repeats) stays empty and the row stays in the day it was served in: the
            # contract rejects it there with the reason a CSV row with that text gets (issue 20),
            # and its raw values are kept. Rows stored without a partition are replaced by each
            # run, and this reader only sees the run's days: another run would drop them.
            _refuse_surrogates(page.label, row_id, fields)
            row = canonical_row(
                row_id,
                page.label,
                row_id,
                fields,
                None,
                stamp.to_pydatetime() if stamp is not None else None,
            )
            # Extra keys as exact JSON with non-ASCII escaped: an unpaired surrogate in one
            # stays an escape, and the contract rejects the row as it does such metadata.
            row["extra_columns"] = json_text(extras) if extras else None
            rows.append(row)
        return rows


@dataclass
class ApiSource(PagedHttpSource):
    column_map: dict[str, str] | None = None
    source_type: str = "API"

    @property
    def source_id(self) -> str:
        return self.explicit_source_id or f"api:{self.where()}/entries"

    def selection(self) -> object:
        return json.dumps(self.column_map, sort_keys=True)

    def fetch_page(
        self,
        client: JsonHttpClient,
        partition_key: str,
        window: tuple[datetime, datetime],
        resume: object | None,
        number: int,
    ) -> Page:
        params: dict[str, object] = {
            "from": utc_iso(window[0]),
            "to": utc_iso(window[1]),
            "limit": self.page_size,
        }
        if resume is not None:
            params["cursor"] = resume
        label = f"API page {number} of partition {partition_key} (GET /entries?{urlencode(params)})"
        document = client.get_json("entries", params, label)
        if not isinstance(document, dict):
            raise MalformedPageError(
                label, f"expected a JSON object, got {type(document).__name__}"
            )
        entries = document.get("entries")
        if not isinstance(entries, list):
            raise MalformedPageError(label, "'entries' is missing or not a list")
        if "next_cursor" not in document:
            raise MalformedPageError(label, "'next_cursor' is missing (null ends the day)")
        following = document["next_cursor"]
        if following is not None and not isinstance(following, str | int):
            raise MalformedPageError(label, "'next_cursor' must be a string or null")
        if following is not None and following == resume:
            raise MalformedPageError(label, "'next_cursor' repeats the cursor of this very page")
        return Page(
            label,
            [self._entry(e, label, i) for i, e in enumerate(entries)],
            following,
            following is None,
        )

    def _entry(
        self, entry: object, label: str, position: int
    ) -> tuple[int, dict[str, str | None], dict[str, object]]:
        if not isinstance(entry, dict):
            raise MalformedPageError(label, f"entry {position} is not a JSON object")
        row_id = entry_id(entry, "id", label, position)
        renames = self.column_map or {}
        fields: dict[str, str | None] = {}
        extras: dict[str, object] = {}
        for name, value in entry.items():
            if name == "id":
                continue
            target = renames.get(name, name)
            if target in SOURCE_FIELDS:
                fields[target] = field_text(value)
            elif value is not None:
                extras[name] = value
        return row_id, fields, extras
