"""Asset checks: the ledger's invariants, evaluated in every run that materializes the
reconciliation report.

They target `reconciliation_report` (stage 5, Audit & Verification), not `posted_batches`: a
failed blocking check skips what comes after the checked asset, and the report is exactly what
must still be produced when the ledger does not reconcile, since it shows the auditor where. The
checks are blocking, so a ledger that breaks an invariant fails the run and stops anything
downstream of the report (and the balance constraints job refuses on its own validation too).

Each check reads the ledger itself through the reconciliation queries (sql/queries/), never the
pipeline's counters, so a hand-made inconsistency is caught whichever run comes next:
  debits_equal_credits        per ledger and currency, debits − credits = FX net (exactly), and
                              per currency the stored balances sum to the entries' net;
  balances_match_entries      every stored balance equals the sum of its entries (the seed's
                              6.2, fixed) and available + reserved = balance;
  no_duplicate_references     no (ledger_id, reference_id) twice (the seed's 1.1);
  source_rows_accounted_for   per partition: read = posted + duplicates + conflicts + rejected;
  outbox_coverage             every entry of these partitions has its outbox row (what SCB
                              sync needs), and so does every entry of the ledger; no outbox row
                              outlives its entry;
  control_totals_match        per currency, the count and exact sum of the source's valid rows
                              equal what the ledger posted plus what it held (duplicates,
                              conflicts) for these partitions.
Together they cover every problem the report lists, so a report that does not reconcile fails
its run. The three per-partition checks are partitioned like the asset; the three whole-ledger
checks are not (one result describes the whole ledger, whatever partitions the run covered).
"""

import dagster as dg
from psycopg.rows import dict_row

from ledger_backfill_dagster.defs.backfill.common import rows_table, source_reader
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.defs.partitions import daily_partitions
from ledger_backfill_dagster.ledger.reconcile import (
    BALANCES_BY_CURRENCY_COLUMNS,
    CONTROL_TOTAL_COLUMNS,
    CURRENCY_TOTAL_COLUMNS,
    DRIFT_COLUMNS,
    PARTITION_COLUMNS,
    control_totals,
    exact_sum,
    held_totals,
    ledger_totals,
    partition_accounts,
    source_control_totals,
)
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings
from ledger_backfill_dagster.resources.stage_store import StageStore

SHOWN = 50  # rows of evidence kept in a check's metadata


def _keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    return sorted(context.partition_keys)


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    description="Per ledger and currency debits − credits equals the FX net exactly, and per "
    "currency the stored balances sum to the entries' net.",
)
def debits_equal_credits(ledger_db: LedgerDatabase) -> dg.AssetCheckResult:
    with ledger_db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        totals = cur.execute(query("reconcile/currency_totals")).fetchall()
        by_currency = cur.execute(query("reconcile/balances_by_currency")).fetchall()
    unbalanced = [t for t in totals if not t["balanced"]]
    inconsistent = [c for c in by_currency if not c["consistent"]]
    return dg.AssetCheckResult(
        passed=not unbalanced and not inconsistent,
        description=(
            "debits equal credits in every ledger and currency"
            if not unbalanced and not inconsistent
            else f"{len(unbalanced)} ledger/currency pair(s) unbalanced, "
            f"{len(inconsistent)} currency(ies) whose stored balances differ from the entries"
        ),
        metadata={
            "unbalanced_pairs": dg.MetadataValue.int(len(unbalanced)),
            "inconsistent_currencies": dg.MetadataValue.int(len(inconsistent)),
            "currency_totals": rows_table(totals[:SHOWN], CURRENCY_TOTAL_COLUMNS),
            "balances_by_currency": rows_table(by_currency[:SHOWN], BALANCES_BY_CURRENCY_COLUMNS),
        },
    )


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    description="Every stored balance equals the sum of its entries (debits by amount, credits "
    "by credit_amount), exactly, and available + reserved = balance.",
)
def balances_match_entries(ledger_db: LedgerDatabase) -> dg.AssetCheckResult:
    with ledger_db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        drift = cur.execute(query("reconcile/balance_drift")).fetchall()
    return dg.AssetCheckResult(
        passed=not drift,
        description=(
            "every balance equals the sum of its entries"
            if not drift
            else f"{len(drift)} account balance(s) differ from their entries "
            f"(first: {drift[0]['account_id']}, difference {drift[0]['difference']})"
        ),
        metadata={
            "accounts_with_drift": dg.MetadataValue.int(len(drift)),
            "drift": rows_table(drift[:SHOWN], DRIFT_COLUMNS),
        },
    )


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    description="No (ledger_id, reference_id) appears twice in ledger_entries.",
)
def no_duplicate_references(ledger_db: LedgerDatabase) -> dg.AssetCheckResult:
    with ledger_db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        duplicates = cur.execute(query("reconcile/duplicate_references")).fetchall()
    return dg.AssetCheckResult(
        passed=not duplicates,
        description=(
            "every (ledger_id, reference_id) is unique"
            if not duplicates
            else f"{len(duplicates)} reference(s) posted more than once"
        ),
        metadata={
            "duplicate_references": dg.MetadataValue.int(len(duplicates)),
            "examples": rows_table(duplicates[:SHOWN], ["ledger_id", "reference_id", "count"]),
        },
    )


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    partitions_def=daily_partitions,
    description="Per partition, every source row read ended somewhere: "
    "read = posted + duplicates + conflicts + rejected.",
)
def source_rows_accounted_for(
    context: dg.AssetCheckExecutionContext, source: SourceSettings, ledger_db: LedgerDatabase
) -> dg.AssetCheckResult:
    reader = source_reader(source)
    keys = _keys(context)
    read = StageStore.default().rows_read(reader.source_key, keys)
    with ledger_db.connection() as conn:
        rows = [p.as_row() for p in partition_accounts(conn, reader.source_id, read)]
    off = [r for r in rows if r["unaccounted"]]
    return dg.AssetCheckResult(
        passed=not off,
        description=(
            f"all {sum(read.values())} rows of {len(keys)} partition(s) accounted for"
            if not off
            else "rows unaccounted for in "
            + ", ".join(f"{r['partition_key']} ({r['unaccounted']:+d})" for r in off[:10])
        ),
        metadata={
            "partitions": dg.MetadataValue.int(len(keys)),
            "partitions_off": dg.MetadataValue.int(len(off)),
            "rows_read": dg.MetadataValue.int(sum(read.values())),
            "by_partition": rows_table((off or rows)[:SHOWN], PARTITION_COLUMNS),
        },
    )


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    partitions_def=daily_partitions,
    description="Every entry these partitions posted has its dual-ledger outbox row (required for "
    "SCB sync), as does every other entry; no outbox row outlives its entry.",
)
def outbox_coverage(
    context: dg.AssetCheckExecutionContext, source: SourceSettings, ledger_db: LedgerDatabase
) -> dg.AssetCheckResult:
    reader = source_reader(source)
    keys = _keys(context)
    with ledger_db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        statuses = cur.execute(
            query("dual_ledger/outbox_status"),
            {"source_id": reader.source_id, "partition_keys": keys},
        ).fetchall()
        ledger = cur.execute(query("dual_ledger/outbox_coverage")).fetchone() or {}
    missing_here = sum(s["count"] for s in statuses if s["status"] == "MISSING")
    missing_anywhere = int(ledger.get("entries_without_outbox", 0))
    orphans = int(ledger.get("outbox_without_entry", 0))
    passed = missing_here == 0 and missing_anywhere == 0 and orphans == 0
    problems = []
    if missing_here:
        problems.append(f"{missing_here} entries of these partitions have no outbox row")
    if missing_anywhere - missing_here:
        problems.append(f"{missing_anywhere - missing_here} other entries have no outbox row")
    if orphans:
        problems.append(f"{orphans} outbox row(s) point at an entry that no longer exists")
    return dg.AssetCheckResult(
        passed=passed,
        description="every entry has its outbox row" if passed else "; ".join(problems),
        metadata={
            "source_type": dg.MetadataValue.text(reader.source_type),
            "entries_without_outbox_in_partitions": dg.MetadataValue.int(missing_here),
            "entries_without_outbox_in_ledger": dg.MetadataValue.int(missing_anywhere),
            "outbox_rows_without_entry": dg.MetadataValue.int(orphans),
            "outbox_by_status": rows_table(statuses, ["status", "count", "oldest", "newest"]),
            "entries_without_outbox": rows_table(
                ledger.get("sample_without_outbox") or [],
                ["id", "ledger_id", "reference_id", "backfill_source_type"],
            ),
        },
    )


@dg.asset_check(
    asset=reconciliation_report,
    blocking=True,
    partitions_def=daily_partitions,
    description="Per currency, the count and exact sum of the source's valid rows of these "
    "partitions equal what the ledger posted plus what it held as duplicates or conflicts.",
)
def control_totals_match(
    context: dg.AssetCheckExecutionContext, source: SourceSettings, ledger_db: LedgerDatabase
) -> dg.AssetCheckResult:
    reader = source_reader(source)
    keys = _keys(context)
    validated = StageStore.default().validated_paths(reader.source_key, keys)
    source_totals = source_control_totals(validated)
    with ledger_db.connection() as conn:
        totals = control_totals(
            source_totals,
            ledger_totals(conn, reader.source_id, keys),
            held_totals(conn, reader.source_id, keys),
        )
    off = [t for t in totals if not t.matches]
    return dg.AssetCheckResult(
        passed=not off,
        description=(
            f"control totals match in {len(totals)} currency(ies)"
            if not off
            else "source control totals differ from ledger + held rows in "
            + ", ".join(
                f"{t.currency} (source {t.source_count} rows, {t.source_sum}; ledger + held "
                f"{t.ledger_count + t.held_count} rows, {exact_sum(t.ledger_sum, t.held_sum)})"
                for t in off[:10]
            )
        ),
        metadata={
            "currencies_off": dg.MetadataValue.int(len(off)),
            "control_totals": rows_table(
                [vars(t) | {"matches": t.matches} for t in (off or totals)[:SHOWN]],
                list(CONTROL_TOTAL_COLUMNS),
            ),
        },
    )


LEDGER_CHECKS = [
    debits_equal_credits,
    balances_match_entries,
    no_duplicate_references,
    source_rows_accounted_for,
    outbox_coverage,
    control_totals_match,
]
