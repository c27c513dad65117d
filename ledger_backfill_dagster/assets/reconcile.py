"""Stage 5, Audit & Verification: the reconciliation report, in the UI and as files."""

import json
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ledger_backfill_dagster.assets.common import GROUP, partition_table, rows_table, stage
from ledger_backfill_dagster.assets.post import posted_batches
from ledger_backfill_dagster.currencies import places_table
from ledger_backfill_dagster.ledger.reconcile import (
    EXACT,
    Reconciliation,
    exact_sum,
    held_totals,
    reconcile,
)
from ledger_backfill_dagster.partitions import daily_partitions
from ledger_backfill_dagster.reports import summary_markdown, write_reconciliation
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.settings import BackfillSettings
from ledger_backfill_dagster.stages import StageStore

CONTROL_TOTAL_FILES = 256  # partitions per aggregation: bounds memory on large days
CONTROL_TOTAL_SCHEMA = pa.schema([("currency_code", pa.string()), ("amount", pa.string())])
# Amounts as Arrow decimals wide enough for any the contract admits, and for any sum of them:
# at most MAX_INTEGER_DIGITS (24) before the point and 18 after (the most minor units a currency
# is allowed), so 2^63 rows of the largest amount sum to under 10^43, far below the 10^58 that
# 76 digits with 18 after the point hold. (decimal128(38, 18) held only 20 digits before the
# point: a 21-digit amount could not be cast, and ten of 99,999,999,999,999,999,999.99 wrapped
# around to a negative sum.) An amount with more digits fails the cast loudly, never rounds.
AMOUNT_SCALE = max(places_table().values())
AMOUNT_TYPE = pa.decimal256(76, AMOUNT_SCALE)
UNPARTITIONED_REJECTS = """
SELECT count(*) FROM ledger_backfill_rejects WHERE source_id = %s AND partition_key IS NULL
"""


def source_control_totals(
    store: StageStore, source_key: str, keys: list[str]
) -> dict[str, tuple[int, Decimal]]:
    """Count and exact sum per currency of the valid source rows of these partitions.

    Reads only the two columns it needs, a few hundred partitions per Arrow aggregation: reading
    each whole partition into pandas cost ~50 ms apiece, a minute over a 3-year backfill."""
    totals: dict[str, tuple[int, Decimal]] = {}
    for first in range(0, len(keys), CONTROL_TOTAL_FILES):
        tables = []
        for key in keys[first : first + CONTROL_TOTAL_FILES]:
            path = store.path(source_key, "validated", key)
            if not path.exists():
                store.read_frame(source_key, "validated", key)  # raises, naming what is missing
            table = pq.read_table(path, columns=["currency_code", "amount"])
            tables.append(table.cast(CONTROL_TOTAL_SCHEMA))
        table = pa.concat_tables(tables)
        if table.num_rows == 0:
            continue
        table = table.set_column(1, "amount", pc.cast(table["amount"], AMOUNT_TYPE))
        grouped = table.group_by("currency_code").aggregate(
            [("amount", "sum"), ("amount", "count")]
        )
        for currency, exact, count in zip(
            grouped["currency_code"].to_pylist(),
            grouped["amount_sum"].to_pylist(),
            grouped["amount_count"].to_pylist(),
            strict=True,
        ):
            before_count, before_total = totals.get(currency, (0, Decimal(0)))
            total = exact_sum(before_total, exact or Decimal(0))
            totals[currency] = (before_count + count, _plain(total))
    return totals


def _plain(value: Decimal) -> Decimal:
    """Drop the trailing zeros of the Arrow scale (19534940.598000… → 19534940.598), exactly
    (`normalize` in the default context would round to 28 digits)."""
    return Decimal(format(value.normalize(EXACT), "f"))


def build_reconciliation(
    ledger_db: LedgerDatabase, store: StageStore, source_id: str, source_key: str, keys: list[str]
) -> Reconciliation:
    rows_read = {}
    for key in keys:
        pointer = store.path(source_key, "extracted", key, ".json")
        rows_read[key] = json.loads(pointer.read_text())["rows"] if pointer.exists() else 0
    with ledger_db.connection() as conn:
        unpartitioned = conn.execute(UNPARTITIONED_REJECTS, (source_id,)).fetchone()[0]
        return reconcile(
            conn,
            source_id,
            rows_read,
            unpartitioned,
            source_totals=source_control_totals(store, source_key, keys),
            held_totals=held_totals(conn, source_id, keys),
        )


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"postgres", "markdown"},
    deps=[posted_batches],
)
def reconciliation_report(
    context: dg.AssetExecutionContext, settings: BackfillSettings, ledger_db: LedgerDatabase
) -> dg.MaterializeResult:
    """Proof that the backfill reconciles, per partition and for the whole source: every source
    row accounted for (read = posted + duplicates + conflicts + rejected), control totals per
    currency, debits = credits per ledger and currency, every balance equal to the sum of its
    entries (the seed's 6.2, fixed), outbox coverage (6.3). Also written as Markdown and CSV
    under the reports folder. The report is always written; each problem it can list has a
    blocking asset check (checks.py), so a report that does not reconcile fails the run."""
    s = stage(context, settings)
    r = build_reconciliation(ledger_db, s.store, s.source.source_id, s.source.source_key, s.keys)
    path = write_reconciliation(settings.reports_path, s.source.source_key, r)
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
            "report": dg.MetadataValue.md(summary_markdown(r)),
            "report_file": dg.MetadataValue.path(str(path)),
            "currency_totals": rows_table(
                r.currency_totals,
                ["ledger_id", "currency", "debits", "credits", "fx_net", "balanced"],
            ),
            **partition_table(
                s.keys,
                "by_partition",
                [vars(p) | {"unaccounted": p.unaccounted} for p in r.partitions],
                [
                    "partition_key",
                    "read",
                    "posted",
                    "duplicates",
                    "conflicts",
                    "rejected",
                    "unaccounted",
                    "checkpoint_status",
                ],
            ),
        }
    )
