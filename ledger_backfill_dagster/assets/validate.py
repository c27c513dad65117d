"""Stage 3, Validate Service: enforce the contract; quarantine what breaks it, with reasons."""

from collections import Counter

import dagster as dg

from ledger_backfill_dagster.assets.common import GROUP, rows_table, stage
from ledger_backfill_dagster.assets.transform import transformed_entries
from ledger_backfill_dagster.ledger.rejects import raw_rows, replace_rejects
from ledger_backfill_dagster.partitions import daily_partitions
from ledger_backfill_dagster.reports import write_error_report
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.settings import BackfillSettings
from ledger_backfill_dagster.validation import split


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
    with its line and raw values, and listed in a per-partition error report CSV. Bad rows alone
    never fail the run."""
    s = stage(context, settings)
    valid_total = rejected_total = 0
    reasons: Counter[str] = Counter()
    with ledger_db.connection() as conn:
        for key in s.keys:
            transformed = s.store.read_frame(s.source.source_key, "transformed", key)
            valid, rejects = split(transformed)
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
    if rejected_total:
        context.log.warning(f"{rejected_total} row(s) rejected; see ledger_backfill_rejects")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(valid_total),
            "valid": dg.MetadataValue.int(valid_total),
            "rejected": dg.MetadataValue.int(rejected_total),
            "reject_reasons": rows_table(
                [{"reason": r, "rows": n} for r, n in reasons.most_common(50)], ["reason", "rows"]
            ),
        }
    )
