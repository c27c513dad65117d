"""Choose the Source Reader for BACKFILL_SOURCE_TYPE: CSV (default), DATABASE, API or SCB.

Called through `SourceSettings.reader()`, the one place a reader is built from the settings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import dagster as dg

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS
from ledger_backfill_dagster.lib.env import backfill_start_date
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.sources.api import ApiSource
from ledger_backfill_dagster.sources.base import SourceReader
from ledger_backfill_dagster.sources.csv_source import CsvSource
from ledger_backfill_dagster.sources.database import DatabaseSource
from ledger_backfill_dagster.sources.layout import LayoutError, load_column_map
from ledger_backfill_dagster.sources.scb import ScbSource

if TYPE_CHECKING:  # settings.py imports this module to build its reader
    from ledger_backfill_dagster.resources.settings import SourceSettings


def make_source(settings: SourceSettings) -> SourceReader:
    if settings.source_type == "CSV":
        if not settings.source_file:
            raise SettingsError("BACKFILL_SOURCE_FILE is not set: which CSV should be backfilled?")
        return CsvSource(
            spec=settings.source_file,
            start_date=backfill_start_date(),
            source_timezone=settings.source_timezone,
            column_map_file=settings.column_map_file,
            explicit_source_id=settings.source_id,
        )
    if settings.source_type == "DATABASE":
        return DatabaseSource(
            url=_source_url(settings, "a PostgreSQL URL"),
            table=settings.source_table,
            query=settings.source_query,
            id_column=settings.source_id_column,
            timestamp_column=settings.source_timestamp_column,
            column_map=column_map(settings),
            start_date=backfill_start_date(),
            source_timezone=settings.source_timezone,
            page_size=settings.source_page_size,
            timeout_seconds=settings.source_timeout_seconds,
            max_retries=settings.source_max_retries,
            retry_delay_ms=settings.retry_delay_ms,
            explicit_source_id=settings.source_id,
        )
    if settings.source_type in ("API", "SCB"):
        # The fields ApiSource and ScbSource share (each is type-checked where it is declared).
        common: dict[str, Any] = {
            "base_url": _source_url(settings, "the API's base URL"),
            "token": _secret(settings.connection.api_token) if settings.connection else None,
            "start_date": backfill_start_date(),
            "source_timezone": settings.source_timezone,
            "page_size": settings.source_page_size,
            "timeout_seconds": settings.source_timeout_seconds,
            "max_retries": settings.source_max_retries,
            "retry_delay_ms": settings.retry_delay_ms,
            "max_retry_after": settings.source_max_retry_after,
            "explicit_source_id": settings.source_id,
        }
        if settings.source_type == "API":
            return ApiSource(**common, column_map=column_map(settings))
        return ScbSource(**common, sovereign_bank_id=settings.scb_sovereign_bank_id or "")
    raise SettingsError(f"source type {settings.source_type} is not available in this build")


def _secret(value: object) -> str | None:
    """A resource field's value; outside a run (the CLI) an EnvVar is read from the environment."""
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    if value is None or isinstance(value, str):  # the field's own value, None when unset
        return value
    raise TypeError(f"a secret field holds a {type(value).__name__}, not text or an EnvVar")


def _source_url(settings: SourceSettings, what: str) -> str:
    url = _secret(settings.connection.url) if settings.connection else None
    if not url:
        raise SettingsError(
            f"BACKFILL_SOURCE_URL is not set: a {settings.source_type} source needs {what}"
        )
    return url


def column_map(settings: SourceSettings) -> dict[str, str] | None:
    """BACKFILL_SOURCE_COLUMN_MAP (inline JSON) or else COLUMN_MAP_FILE: source name → field."""
    if not settings.source_column_map:
        try:
            return load_column_map(settings.column_map_file)
        except (OSError, LayoutError) as exc:
            raise SettingsError(str(exc)) from exc
    try:
        mapping = json.loads(settings.source_column_map)
    except ValueError as exc:
        raise SettingsError(f"BACKFILL_SOURCE_COLUMN_MAP is not JSON: {exc}") from exc
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise SettingsError('BACKFILL_SOURCE_COLUMN_MAP must be {"sourceColumn": "field", ...}')
    unknown = sorted(set(mapping.values()) - set(SOURCE_FIELDS))
    if unknown:
        raise SettingsError(f"BACKFILL_SOURCE_COLUMN_MAP names unknown fields {unknown}")
    return mapping
