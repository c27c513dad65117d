"""Stage 1, Source Reader: stage each partition's source rows as Parquet."""

import dagster as dg

from ledger_backfill_dagster.defs.backfill.common import (
    GROUP,
    add_partition_metadata,
    partition_table,
    source_failure,
    stage,
)
from ledger_backfill_dagster.defs.partitions import backfill_policy, daily_partitions
from ledger_backfill_dagster.ledger.rejects import replace_rejects
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy(),
    group_name=GROUP,
    kinds={"python", "parquet"},
)
def extracted_source(
    context: dg.AssetExecutionContext, source: SourceSettings, ledger_db: LedgerDatabase
) -> dg.MaterializeResult:
    """Source rows of each UTC day, staged as Parquet with their file, line and parsed timestamp.

    A CSV source is scanned once per version of its files, however many partitions are asked for.
    Lines that cannot be read and rows whose timestamp places them in no partition are
    quarantined once per source in ledger_backfill_rejects (stage 'extract').
    """
    s = stage(context, source)
    ledger_db.migrate()
    try:
        result = s.source.extract(s.keys, s.store.root)
    except (OSError, ValueError) as exc:
        raise source_failure(exc) from exc
    for key in s.keys:
        s.store.write_pointer(
            s.source.source_key, key, result.staged.get(key), result.rows_by_partition[key]
        )
    # Each partition's event its own count (the step's total otherwise).
    add_partition_metadata(
        context,
        {
            key: {"dagster/row_count": dg.MetadataValue.int(result.rows_by_partition[key])}
            for key in s.keys
        },
    )
    rejects = result.unpartitioned_rejects
    with ledger_db.connection() as conn:
        replace_rejects(
            conn,
            source_id=result.source_id,
            source_type=result.source_type,
            partition_key=None,
            stage="extract",
            rejects=rejects,
            run_id=s.run_id,
        )
    staged_rows = sum(result.rows_by_partition.values())
    context.log.info(
        f"{result.source_type} source {result.source_id}: {staged_rows} rows staged for "
        f"{len(s.keys)} partition(s); {len(rejects)} line(s) belong to no partition"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(staged_rows),
            "source_id": dg.MetadataValue.text(result.source_id),
            "source_type": dg.MetadataValue.text(result.source_type),
            "rows_read_from_source": dg.MetadataValue.int(result.rows_read),
            "rejected_without_partition": dg.MetadataValue.int(len(rejects)),
            "partitions": dg.MetadataValue.int(len(s.keys)),
            **partition_table(
                s.keys,
                "rows_by_partition",
                [{"partition": k, "rows": result.rows_by_partition[k]} for k in s.keys],
                ["partition", "rows"],
            ),
            **{k: dg.MetadataValue.text(str(v)) for k, v in result.details.items()},
        }
    )
