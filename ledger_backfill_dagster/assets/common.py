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
# A single-run backfill writes one materialization event per partition, and each carries the
# step's metadata: a per-partition table in it was stored once per partition (a 3-year run wrote
# a 500-row table 1,096 times, ~50 ms per event). Above this many partitions the table is left
# out; every partition's event still carries its own numbers, and the ledger tables and the
# reconciliation report hold them all.
PARTITION_TABLE_MAX = 62


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


def partition_table(
    keys: list[str], name: str, rows: list[dict], columns: list[str]
) -> dict[str, dg.MetadataValue]:
    """`{name: table}` for a run over a few partitions; a note instead for a long backfill."""
    if len(keys) <= PARTITION_TABLE_MAX:
        return {name: rows_table(rows, columns)}
    return {
        name: dg.MetadataValue.text(
            f"{len(keys)} partitions: see each partition's own materialization, and the "
            "ledger_backfill_* tables or the reconciliation report for all of them"
        )
    }


def source_failure(exc: Exception) -> dg.Failure:
    """A source that cannot be read at all fails the run, saying why (with no secret in it)."""
    return dg.Failure(
        description=f"the source cannot be read: {redact(str(exc))}", allow_retries=False
    )
