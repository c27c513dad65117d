"""Stage 3, Validate Service: enforce the contract; quarantine what breaks it, with reasons."""

from collections import Counter

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ledger_backfill_dagster.assets.common import GROUP, rows_table, stage
from ledger_backfill_dagster.assets.transform import transformed_entries
from ledger_backfill_dagster.contract import ARROW_STRING
from ledger_backfill_dagster.ledger.rejects import raw_rows, replace_rejects
from ledger_backfill_dagster.partitions import daily_partitions
from ledger_backfill_dagster.reports import write_error_report
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.settings import BackfillSettings
from ledger_backfill_dagster.stages import StageStore
from ledger_backfill_dagster.validation import ContractError, split

UNPARTITIONED_REPORT = "unpartitioned"
UNPARTITIONED_REJECTS = """
SELECT source_row_id, source_file, line_number, reasons, coalesce(raw_row::text, raw_text)
  FROM ledger_backfill_rejects
 WHERE source_id = %s AND partition_key IS NULL
 ORDER BY source_row_id
"""


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"pandera", "parquet"},
    deps=[transformed_entries],
)
def validated_entries(
    context: dg.AssetExecutionContext, settings: BackfillSettings, ledger_db: LedgerDatabase
) -> dg.MaterializeResult:
    """Entries that meet the ledger entry contract (the Pandera model `LedgerEntrySource`).

    Validation is lazy, so a rejected row carries every rule it breaks. Rejects never reach the
    ledger and are never dropped: each is stored in ledger_backfill_rejects (stage 'validate')
    with its line and raw values, and listed in a per-partition error report CSV (rows of no
    partition in `unpartitioned.csv`). Bad rows alone never fail the run."""
    s = stage(context, settings)
    valid_total = rejected_total = 0
    by_partition: list[dict] = []
    reasons: Counter[str] = Counter()
    with ledger_db.connection() as conn:
        for key in s.keys:
            transformed = _read_transformed(s.store, s.source.source_key, key)
            try:
                valid, rejects = split(transformed)
            except ContractError as exc:
                raise dg.Failure(description=f"{key}: {exc}", allow_retries=False) from exc
            if len(rejects):
                staged = s.store.read_extracted(s.source.source_key, key)
                rejects = raw_rows(staged, rejects["source_row_id"]).merge(
                    rejects, on="source_row_id"
                )
                rejects["raw_text"] = None
                for row_reasons in rejects["reasons"]:
                    reasons.update(row_reasons)
            replace_rejects(
                conn,
                source_id=s.source.source_id,
                source_type=s.source.source_type,
                partition_key=key,
                stage="validate",
                rejects=rejects,
                run_id=s.run_id,
            )
            write_error_report(settings.reports_path, s.source.source_key, key, rejects)
            s.store.write_frame(s.source.source_key, "validated", key, valid)
            valid_total += len(valid)
            rejected_total += len(rejects)
            by_partition.append({"partition": key, "valid": len(valid), "rejected": len(rejects)})
        unpartitioned = pd.DataFrame(
            conn.execute(UNPARTITIONED_REJECTS, (s.source.source_id,)).fetchall(),
            columns=["source_row_id", "source_file", "line_number", "reasons", "raw_row"],
        )
    # Rows that belong to no partition (no readable timestamp, unreadable lines) get one report
    # per source, rewritten by every run, beside the per-partition ones.
    write_error_report(
        settings.reports_path, s.source.source_key, UNPARTITIONED_REPORT, unpartitioned
    )
    if rejected_total or len(unpartitioned):
        context.log.warning(
            f"{rejected_total} row(s) rejected in {len(s.keys)} partition(s), {len(unpartitioned)}"
            " belonging to no partition; see ledger_backfill_rejects and the error reports"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(valid_total),
            "valid": dg.MetadataValue.int(valid_total),
            "rejected": dg.MetadataValue.int(rejected_total),
            "by_partition": rows_table(by_partition[:500], ["partition", "valid", "rejected"]),
            "rejected_without_partition": dg.MetadataValue.int(len(unpartitioned)),
            "error_reports": dg.MetadataValue.path(
                str(settings.reports_path / s.source.source_key / "errors")
            ),
            "reject_reasons": rows_table(
                [{"reason": r, "rows": n} for r, n in reasons.most_common(50)], ["reason", "rows"]
            ),
        }
    )


def _read_transformed(store: StageStore, source_key: str, key: str) -> pd.DataFrame:
    """The transformed frame with Arrow-backed text, as the contract's vectorized checks want it
    (several times faster than reading Python strings and converting)."""
    path = store.path(source_key, "transformed", key)
    if not path.exists():
        return store.read_frame(source_key, "transformed", key)  # raises, naming what is missing
    return pq.read_table(path).to_pandas(types_mapper=_arrow_strings)


def _arrow_strings(arrow_type: pa.DataType) -> object:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return ARROW_STRING
    return None
