"""Stage 5, Audit & Verification: the reconciliation report, in the UI and as files."""

import dagster as dg

from ledger_backfill_dagster.defs.backfill.common import GROUP, partition_table, rows_table, stage
from ledger_backfill_dagster.defs.backfill.post import posted_batches
from ledger_backfill_dagster.defs.partitions import backfill_policy, daily_partitions
from ledger_backfill_dagster.ledger.load_mode import loads_of_run
from ledger_backfill_dagster.ledger.reconcile import (
    CURRENCY_TOTAL_COLUMNS,
    PARTITION_COLUMNS,
    reconcile_source,
)
from ledger_backfill_dagster.ledger.reports import summary_markdown, write_reconciliation
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy(),
    group_name=GROUP,
    kinds={"postgres", "markdown"},
    deps=[posted_batches],
)
def reconciliation_report(
    context: dg.AssetExecutionContext,
    source: SourceSettings,
    monitoring: MonitoringSettings,
    ledger_db: LedgerDatabase,
) -> dg.MaterializeResult:
    """Proof that the backfill reconciles, per partition and for the whole source: every source
    row accounted for (read = posted + duplicates + conflicts + rejected), control totals per
    currency, debits = credits per ledger and currency, every balance equal to the sum of its
    entries (the seed's 6.2, fixed), outbox coverage (6.3). Also written as Markdown and CSV
    under the reports folder. The report is always written; each problem it can list has a
    blocking asset check (checks.py), so a report that does not reconcile fails the run."""
    s = stage(context, source)
    with ledger_db.connection() as conn:
        r = reconcile_source(
            conn,
            s.source.source_id,
            s.store.rows_read(s.source.source_key, s.keys),
            s.store.validated_paths(s.source.source_key, s.keys),
            s.keys,
        )
        r.load_modes = loads_of_run(conn, s.source.source_id, s.run_id)
    path = write_reconciliation(monitoring.reports_path, s.source.source_key, r)
    if r.reconciles:
        context.log.info(f"reconciliation: RECONCILES ({r.rows_read} rows read); report {path}")
    else:
        context.log.error(
            f"reconciliation: DOES NOT RECONCILE: {r.problems}; report {path}; the blocking "
            "asset checks fail this run"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(r.total("posted")),
            "reconciles": dg.MetadataValue.bool(r.reconciles),
            "rows_read": dg.MetadataValue.int(r.rows_read),
            "posted": dg.MetadataValue.int(r.total("posted")),
            "duplicates": dg.MetadataValue.int(r.total("duplicates")),
            "conflicts": dg.MetadataValue.int(r.total("conflicts")),
            "rejected": dg.MetadataValue.int(r.total("rejected") + r.unpartitioned_rejects),
            "accounts_with_balance_drift": dg.MetadataValue.int(len(r.balance_drift)),
            "load_mode": dg.MetadataValue.text(
                ", ".join(sorted({m["mode"] for m in r.load_modes})) or "not recorded"
            ),
            "report": dg.MetadataValue.md(summary_markdown(r)),
            "report_file": dg.MetadataValue.path(str(path)),
            "currency_totals": rows_table(r.currency_totals, CURRENCY_TOTAL_COLUMNS),
            **partition_table(
                s.keys, "by_partition", [p.as_row() for p in r.partitions], PARTITION_COLUMNS
            ),
        }
    )
