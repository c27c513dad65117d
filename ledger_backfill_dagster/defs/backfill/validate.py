"""Stage 3, Validate Service: enforce the contract; quarantine what breaks it, with reasons."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from ledger_backfill_dagster.defs.backfill.common import (
    GROUP,
    Stage,
    add_partition_metadata,
    partition_table,
    rows_table,
    stage,
)
from ledger_backfill_dagster.defs.backfill.transform import GROUP_ROWS, transformed_entries
from ledger_backfill_dagster.defs.partitions import backfill_policy, daily_partitions
from ledger_backfill_dagster.entries.contract import LedgerEntrySource
from ledger_backfill_dagster.entries.validation import POSTABLE_COLUMNS, ContractError, split
from ledger_backfill_dagster.ledger.rejects import (
    raw_documents,
    raw_frame,
    replace_partition_rejects,
)
from ledger_backfill_dagster.ledger.reports import write_error_report
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings
from ledger_backfill_dagster.resources.stage_store import (
    arrow_text,
    partition_groups,
    partition_tables,
    staged_frame,
)

# Columns whose type decides a verdict or the validated frame's schema.
_JUDGED_COLUMNS = frozenset(LedgerEntrySource.to_schema().columns) | frozenset(POSTABLE_COLUMNS)
UNPARTITIONED_REPORT = "unpartitioned"


@dataclass
class _Totals:
    """What the run reports, partition by partition in key order."""

    valid: int = 0
    rejected: int = 0
    by_partition: list[dict] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, valid: int, rejects: pd.DataFrame) -> None:
        self.valid += valid
        self.rejected += len(rejects)
        self.by_partition.append({"partition": key, "valid": valid, "rejected": len(rejects)})
        if len(rejects):
            for row_reasons in rejects["reasons"]:
                self.reasons.update(row_reasons)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy(),
    group_name=GROUP,
    kinds={"pandera", "parquet"},
    deps=[transformed_entries],
)
def validated_entries(
    context: dg.AssetExecutionContext,
    source: SourceSettings,
    monitoring: MonitoringSettings,
    ledger_db: LedgerDatabase,
) -> dg.MaterializeResult:
    """Entries that meet the ledger entry contract (the Pandera model `LedgerEntrySource`).

    Validation is lazy, so a rejected row carries every rule it breaks. Rejects never reach the
    ledger and are never dropped: each is stored in ledger_backfill_rejects (stage 'validate')
    with its line and raw values, and listed in a per-partition error report CSV (rows of no
    partition in `unpartitioned.csv`). Bad rows alone never fail the run."""
    s = stage(context, source)
    reports = monitoring.reports_path
    totals = _Totals()
    source_key = s.source.source_key
    with ledger_db.connection() as conn:
        groups = partition_groups(s.keys, lambda key: _read_transformed(s, key), GROUP_ROWS)
        for group in groups:
            _validate_group(s, reports, conn, group, totals)
        unpartitioned = pd.DataFrame(
            conn.execute(query("rejects/unpartitioned_rows"), (s.source.source_id,)).fetchall(),
            columns=["source_row_id", "source_file", "line_number", "reasons", "raw_row"],
        )
    # Rows that belong to no partition (no readable timestamp, unreadable lines) get one report
    # per source, rewritten by every run, beside the per-partition ones.
    write_error_report(reports, source_key, UNPARTITIONED_REPORT, unpartitioned)
    if totals.rejected or len(unpartitioned):
        context.log.warning(
            f"{totals.rejected} row(s) rejected in {len(s.keys)} partition(s),"
            f" {len(unpartitioned)} belonging to no partition; see ledger_backfill_rejects and"
            " the error reports"
        )
    add_partition_metadata(  # each partition's event its own counts
        context,
        {
            row["partition"]: {
                "dagster/row_count": dg.MetadataValue.int(row["valid"]),
                "valid": dg.MetadataValue.int(row["valid"]),
                "rejected": dg.MetadataValue.int(row["rejected"]),
            }
            for row in totals.by_partition
        },
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(totals.valid),
            "valid": dg.MetadataValue.int(totals.valid),
            "rejected": dg.MetadataValue.int(totals.rejected),
            **partition_table(
                s.keys, "by_partition", totals.by_partition, ["partition", "valid", "rejected"]
            ),
            "rejected_without_partition": dg.MetadataValue.int(len(unpartitioned)),
            "error_reports": dg.MetadataValue.path(str(reports / source_key / "errors")),
            "reject_reasons": rows_table(
                [{"reason": r, "rows": n} for r, n in totals.reasons.most_common(50)],
                ["reason", "rows"],
            ),
        }
    )


def _validate_group(
    s: Stage,
    reports: Path,
    conn: psycopg.Connection,
    group: list[tuple[str, pa.Table]],
    totals: _Totals,
) -> None:
    """Validate a group of partitions with one `split` call, then store each partition's valid
    rows, rejects and error report as if it had been validated alone. The contract judges each
    row on its own (no rule compares rows), so a row's verdict does not depend on its group.

    A group that cannot be judged as one (its frames do not concatenate, a source_row_id
    repeats, or the contract refuses the frame) is redone partition by partition: the
    partitions then keep their own verdicts and a contract error names its partition."""
    keys = [key for key, _ in group]
    sizes = [table.num_rows for _, table in group]
    table = _concatenated([t for _, t in group])
    frame = None if table is None else table.to_pandas(types_mapper=arrow_text)
    del table
    if len(group) > 1 and (frame is None or not frame["source_row_id"].is_unique):
        for member in group:
            _validate_group(s, reports, conn, [member], totals)
        return
    assert frame is not None  # a single partition's table always concatenates
    try:
        valid, rejects = split(frame)
    except ContractError as exc:
        if len(group) > 1:
            for member in group:
                _validate_group(s, reports, conn, [member], totals)
            return
        raise dg.Failure(description=f"{keys[0]}: {exc}", allow_retries=False) from exc
    if len(group) == 1:
        by_key, valid_sizes = {keys[0]: rejects}, [len(valid)]
    else:
        by_key, valid_sizes = _by_partition(keys, sizes, frame["source_row_id"], rejects)
    del frame
    by_key = _with_raw_rows(s, by_key)
    replace_partition_rejects(
        conn,
        source_id=s.source.source_id,
        source_type=s.source.source_type,
        stage="validate",
        rejects=by_key,
        run_id=s.run_id,
    )
    tables = partition_tables(valid, valid_sizes)
    for key, size, table in zip(keys, valid_sizes, tables, strict=True):
        write_error_report(reports, s.source.source_key, key, by_key[key])
        s.store.write_table(s.source.source_key, "validated", key, table)
        totals.add(key, size, by_key[key])


def _concatenated(tables: list[pa.Table]) -> pa.Table | None:
    """The partitions' frames as one, or None if concatenating would change what `split` sees
    or writes: other columns, or another type. Only a column that neither the contract nor the
    validated frame reads (source_file) may differ, and only by being all-missing (Arrow's null
    type, how an empty object column is written) in some partitions."""
    first = tables[0].schema
    for schema in (t.schema for t in tables[1:]):
        if schema.names != first.names:
            return None
        for a, b in zip(first, schema, strict=True):
            either_null = pa.types.is_null(a.type) or pa.types.is_null(b.type)
            if a.type != b.type and (a.name in _JUDGED_COLUMNS or not either_null):
                return None
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _by_partition(
    keys: list[str], sizes: list[int], row_ids: pd.Series, rejects: pd.DataFrame
) -> tuple[dict[str, pd.DataFrame], list[int]]:
    """Split a group's rejects by partition, and count each partition's valid rows. `split`
    keeps the rows' order in both of its outputs, so a partition's rejects and valid rows are
    consecutive runs; which rows were rejected is told by their (unique) source_row_id."""
    rejected = row_ids.isin(rejects["source_row_id"]).to_numpy(dtype=bool)
    bounds = np.cumsum([0, *sizes])
    rejected_before = np.concatenate([[0], np.cumsum(rejected)])
    by_key: dict[str, pd.DataFrame] = {}
    valid_sizes: list[int] = []
    for key, start, stop in zip(keys, bounds[:-1], bounds[1:], strict=True):
        first, last = rejected_before[start], rejected_before[stop]
        by_key[key] = rejects.iloc[first:last].reset_index(drop=True)
        valid_sizes.append(int((stop - start) - (last - first)))
    return by_key, valid_sizes


def _with_raw_rows(s: Stage, rejects: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each partition's rejects with their untransformed values, file and line: what
    `raw_rows(staged, ids).merge(rejects, on="source_row_id")` gives per partition. Only the
    rejected staged rows are converted to pandas, those of the whole group at once, and their
    JSON documents are made in one pass; each partition's frame is then built from its own rows
    (so its column types are what they would be alone)."""
    keys = [key for key, frame in rejects.items() if len(frame)]
    if not keys:
        return rejects
    tables = []
    for key in keys:
        table = s.store.read_extracted_table(s.source.source_key, key)
        ids = pa.array(rejects[key]["source_row_id"].to_numpy(), type=pa.int64())
        tables.append(table.filter(pc.is_in(table["source_row_id"], value_set=ids)))
    staged = staged_frame(pa.concat_tables(tables))
    documents = raw_documents(staged)
    joined = dict(rejects)
    start = 0
    for key, table in zip(keys, tables, strict=True):
        stop = start + table.num_rows
        raw = raw_frame(staged.iloc[start:stop], documents[start:stop])
        joined[key] = _joined(raw, rejects[key])
        start = stop
    return joined


def _joined(raw: pd.DataFrame, rejects: pd.DataFrame) -> pd.DataFrame:
    """`raw.merge(rejects, on="source_row_id")` plus an empty raw_text. Both list the same rows
    in the same order unless the staged partition changed since it was transformed, so the
    reasons are put beside the raw rows directly: a merge per partition is a fixed cost a
    thousand small partitions would each pay (docs/performance.md, 'Why the code is shaped this
    way')."""
    ids = raw["source_row_id"].to_numpy()
    if np.array_equal(ids, rejects["source_row_id"].to_numpy()):
        joined = raw.assign(reasons=rejects["reasons"].to_numpy())
    else:
        joined = raw.merge(rejects, on="source_row_id")
    joined["raw_text"] = None
    return joined


def _read_transformed(s: Stage, key: str) -> pa.Table:
    """A partition's transformed rows (read as Arrow; `_validate_group` converts a whole group
    to pandas at once)."""
    return s.store.read_table(s.source.source_key, "transformed", key)
