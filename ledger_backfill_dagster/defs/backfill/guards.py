"""The reject guard's check on `validated_entries` (ledger/reject_guard.py): per partition, the
share of rejected rows is within MAX_REJECT_RATIO (or the run's override, with its reason).

Posting enforces the guard itself, partition by partition: a held partition is not posted, the
others of the run are, and the run fails naming it. The check shows the same verdict in the UI,
on the asset whose rows were rejected, as soon as validation ends. It is not `blocking`: a
blocking check that fails skips the whole downstream step, and a range run posts all its
partitions in one step, so the partitions within the guard would be held with the others."""

import dagster as dg

from ledger_backfill_dagster.defs.backfill.checks import SHOWN
from ledger_backfill_dagster.defs.backfill.common import rows_table, source_reader
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.ledger.reject_guard import held_message, top_reasons
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import PostingSettings, SourceSettings
from ledger_backfill_dagster.resources.stage_store import StageStore


@dg.asset_check(
    asset=validated_entries,
    partitions_def=daily_partitions,
    description="Per partition, rejected rows ÷ rows read ≤ MAX_REJECT_RATIO (partitions of "
    "REJECT_GUARD_MIN_ROWS rows or more); a partition past it is not posted.",
)
def rejects_within_guard(
    context: dg.AssetCheckExecutionContext,
    source: SourceSettings,
    posting: PostingSettings,
    ledger_db: LedgerDatabase,
) -> dg.AssetCheckResult:
    reader = source_reader(source)
    keys = sorted(context.partition_keys)
    store = StageStore.default()
    valid = {k: store.row_count(reader.source_key, "validated", k) for k in keys}
    try:
        guard = posting.reject_guard(dict(context.run.tags))
    except SettingsError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    with ledger_db.connection() as conn:
        rejected = dict(
            conn.execute(query("rejects/by_partition"), (reader.source_id, keys)).fetchall()
        )
        held = guard.held(valid, rejected)
        reasons = top_reasons(conn, reader.source_id, [h.partition_key for h in held])
    return dg.AssetCheckResult(
        passed=not held,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"every partition within the guard, {guard.describe()}"
            if not held
            else held_message(guard, held, reasons)
        ),
        metadata={
            "reject_guard": dg.MetadataValue.text(guard.describe()),
            "partitions_held": dg.MetadataValue.int(len(held)),
            "held": rows_table(
                [
                    {
                        "partition_key": h.partition_key,
                        "valid": h.valid,
                        "rejected": h.rejected,
                        "ratio": f"{h.ratio:.4f}",
                        "most_frequent": "; ".join(r for r, _ in reasons[h.partition_key]),
                    }
                    for h in held[:SHOWN]
                ],
                ["partition_key", "valid", "rejected", "ratio", "most_frequent"],
            ),
        },
    )


GUARD_CHECKS = [rejects_within_guard]
