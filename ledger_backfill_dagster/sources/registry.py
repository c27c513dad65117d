"""Choose the Source Reader for BACKFILL_SOURCE_TYPE."""

from __future__ import annotations

from ledger_backfill_dagster.settings import BackfillSettings, SettingsError, backfill_start_date
from ledger_backfill_dagster.sources.base import SourceReader
from ledger_backfill_dagster.sources.csv_source import CsvSource


def make_source(settings: BackfillSettings) -> SourceReader:
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
    raise SettingsError(f"source type {settings.source_type} is not available in this build")
