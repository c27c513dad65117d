"""Stage 2, Transform Service: staged rows → candidate ledger entries (the seed's rules 1–6)."""

import dagster as dg
import pyarrow as pa

from ledger_backfill_dagster.defs.backfill.common import GROUP, source_failure, stage
from ledger_backfill_dagster.defs.backfill.extract import extracted_source
from ledger_backfill_dagster.defs.partitions import backfill_policy, daily_partitions
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.ledger.accounts import (
    AccountsFileError,
    account_currencies,
    load_accounts,
    read_accounts_file,
)
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings, TransformSettings
from ledger_backfill_dagster.resources.stage_store import (
    StageStore,
    partition_groups,
    partition_tables,
    staged_frame,
)

# Rows transformed (and validated) per call: each call has a fixed cost whatever its size, so a
# thousand small daily partitions are worked in groups of up to this many rows. A group's memory
# grows with its rows: this many is already as fast as twice as many, and small enough that a
# month's partitions of a 1M-entry source stay ungrouped and need no more memory than before
# (docs/performance.md, 'Why the code is shaped this way').
GROUP_ROWS = 50_000


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy(),
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    deps=[extracted_source],
)
def transformed_entries(
    context: dg.AssetExecutionContext,
    source: SourceSettings,
    transform: TransformSettings,
    ledger_db: LedgerDatabase,
) -> dg.MaterializeResult:
    """Each day's rows mapped onto the ledger entry contract: account and transaction type
    mapping, defaults (LEDGER_ID, fiat), trimmed amounts and currencies, UTC timestamps,
    deterministic reference ids where the source has none, metadata as a JSON object, and the
    credit side of FX entries. Loads ACCOUNTS_FILE into bank_accounts first."""
    s = stage(context, source)
    try:
        with ledger_db.connection() as conn:
            if transform.accounts_file:
                added = load_accounts(conn, read_accounts_file(transform.accounts_file))
                context.log.info(f"chart of accounts: {added} new account(s) loaded")
            currencies = account_currencies(conn)
        rules = transform.rules(currencies)
    except (OSError, AccountsFileError, ValueError) as exc:
        raise source_failure(exc) from exc
    total = generated = 0
    source_key = s.source.source_key
    groups = partition_groups(
        s.keys, lambda key: s.store.read_extracted_table(source_key, key), GROUP_ROWS
    )
    for group in groups:
        rows, references = _transform_group(s.store, source_key, group, rules)
        total += rows
        generated += references
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(total),
            "generated_reference_ids": dg.MetadataValue.int(generated),
            "accounts_known": dg.MetadataValue.int(len(currencies)),
            "partitions": dg.MetadataValue.int(len(s.keys)),
        }
    )


def _transform_group(
    store: StageStore, source_key: str, group: list[tuple[str, pa.Table]], rules: TransformRules
) -> tuple[int, int]:
    """Transform a group of partitions in one call and write each partition's rows as its own
    stage frame. `transform` maps each row on its own (its reference ids hash the row's content,
    never its position), so a partition's rows come out the same whatever rows surround them.
    Returns (rows, generated reference ids)."""
    keys = [key for key, _ in group]
    sizes = [table.num_rows for _, table in group]
    staged = staged_frame(pa.concat_tables([table for _, table in group]))
    group.clear()  # the Arrow tables are in `staged` now: free them before transform's peak
    frame = transform(staged, rules)
    del staged
    for key, table in zip(keys, partition_tables(frame, sizes), strict=True):
        store.write_table(source_key, "transformed", key, table)
    return len(frame), int(frame["reference_generated"].sum())
