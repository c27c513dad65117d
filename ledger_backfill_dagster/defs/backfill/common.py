"""What every stage asset needs: its partition keys, its source, and where stage frames live."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.execution.context.metadata_logging import (
    AssetMetadataHandle,
    OutputMetadataAccumulator,
)

from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.user_files import UserFileError
from ledger_backfill_dagster.resources.settings import SourceSettings
from ledger_backfill_dagster.resources.stage_store import StageStore
from ledger_backfill_dagster.sources.base import SourceReader

GROUP = "ledger_backfill"
POOL = "ledger_pg"
# A single-run backfill writes one materialization event per partition, and each carries the
# step's metadata: a per-partition table in it was stored again with every partition's event,
# which made a long backfill's steps slow to record (docs/performance.md, 'Why the code is shaped
# this way'). Above this many partitions the table is left out; every partition's event still
# carries its own numbers, and the ledger tables and the reconciliation report hold them all.
PARTITION_TABLE_MAX = 62
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class Stage:
    keys: list[str]
    source: SourceReader
    store: StageStore
    run_id: str


def stage(context: dg.AssetExecutionContext, source: SourceSettings) -> Stage:
    """Every partition this run covers (a single-run backfill covers many: never just the first)."""
    keys = sorted(context.partition_keys)
    if not keys:
        raise dg.Failure(description=no_partitions(context.run.tags), allow_retries=False)
    return Stage(
        keys=keys,
        source=source_reader(source),
        store=StageStore.default(),
        run_id=context.run.run_id,
    )


def source_reader(source: SourceSettings) -> SourceReader:
    """The run's Source Reader; settings that describe none fail the step, saying why."""
    try:
        return source.reader()
    except SettingsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def no_partitions(tags: Mapping[str, str]) -> str:
    """Why a run covers no partition: a reversed range (Dagster reads A...B with A after B as
    empty), or one no day of which is a partition. Either would otherwise be a green run that
    read nothing."""
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start and end and start > end:
        return (
            f"the partition range {start}...{end} is reversed: it starts after it ends, so it "
            f"covers no day. Write the earlier day first: {end}...{start}"
        )
    if start and end:
        return (
            f"the partition range {start}...{end} covers no partition: the daily partitions "
            "run from BACKFILL_START_DATE to today (UTC)"
        )
    return "this run covers no partition: give a partition or a non-empty partition range"


def add_partition_metadata(
    context: dg.AssetExecutionContext, by_partition: Mapping[str, Mapping[str, dg.MetadataValue]]
) -> None:
    """`context.add_asset_metadata(metadata, partition_key=key)` for every partition at once.

    Dagster's call, per partition, lists the run's whole partition range to check the key, and
    copies and re-checks all the metadata recorded so far: quadratic in the partitions, about
    20 s of a 25-year daily run per step that gives each day its own numbers (docs/performance.md,
    "Per partition"). Here the keys are checked against the run's partitions once and the
    metadata recorded in one step, the way the call records it; should Dagster's internals not
    be where they were (another minor version), the call itself is used."""
    keys = set(context.partition_keys)
    if unknown := sorted(set(by_partition) - keys)[:3]:
        raise dg.DagsterInvariantViolationError(
            f"metadata for partition(s) {unknown} that this run does not target"
        )
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    if step is None or not isinstance(accumulator, OutputMetadataAccumulator):
        for key, metadata in by_partition.items():
            context.add_asset_metadata(metadata, partition_key=key)
        return
    recorded = dict(accumulator.per_output_metadata)
    for key, metadata in by_partition.items():
        handle = AssetMetadataHandle(asset_key=context.asset_key, partition_key=key)
        recorded[handle] = {**recorded.get(handle, {}), **metadata}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=recorded)


def rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dg.TableMetadataValue:
    """A metadata table with every value as text, so exact decimals are shown exactly."""
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])
    records = [
        dg.TableRecord({c: "" if r.get(c) is None else str(r.get(c)) for c in columns})
        for r in rows
    ]
    return dg.MetadataValue.table(records, schema=schema)


def partition_table(
    keys: list[str], name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
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
    """A source that cannot be read at all fails the run, saying why (with no secret in it).
    A user-supplied file (ACCOUNTS_FILE, the map files) names itself and its line instead."""
    if isinstance(exc, UserFileError):
        return dg.Failure(description=redact(str(exc)), allow_retries=False)
    return dg.Failure(
        description=f"the source cannot be read: {redact(str(exc))}", allow_retries=False
    )
