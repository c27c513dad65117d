"""What every stage asset needs: its partition keys, its source, and where stage frames live."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from ledger_backfill_dagster.resources.ledger_database import redact
from ledger_backfill_dagster.settings import BackfillSettings, SettingsError
from ledger_backfill_dagster.sources.base import SourceReader
from ledger_backfill_dagster.sources.registry import make_source
from ledger_backfill_dagster.stages import StageStore

GROUP = "ledger_backfill"
POOL = "ledger_pg"


@dataclass(frozen=True)
class Stage:
    keys: list[str]
    source: SourceReader
    store: StageStore
    run_id: str


def stage(context: dg.AssetExecutionContext, settings: BackfillSettings) -> Stage:
    """Every partition this run covers (a single-run backfill covers many: never just the first)."""
    try:
        source = make_source(settings)
    except SettingsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    return Stage(
        keys=sorted(context.partition_keys),
        source=source,
        store=StageStore.default(),
        run_id=context.run.run_id,
    )


def rows_table(rows: list[dict], columns: list[str]) -> dg.TableMetadataValue:
    """A metadata table with every value as text, so exact decimals are shown exactly."""
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])
    records = [
        dg.TableRecord({c: "" if r.get(c) is None else str(r.get(c)) for c in columns})
        for r in rows
    ]
    return dg.MetadataValue.table(records, schema=schema)


def source_failure(exc: Exception) -> dg.Failure:
    """A source that cannot be read at all fails the run, saying why (with no secret in it)."""
    return dg.Failure(
        description=f"the source cannot be read: {redact(str(exc))}", allow_retries=False
    )
