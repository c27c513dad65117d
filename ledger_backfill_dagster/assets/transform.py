"""Stage 2, Transform Service: staged rows → candidate ledger entries (the seed's rules 1–6)."""

import dagster as dg

from ledger_backfill_dagster.assets.common import GROUP, source_failure, stage
from ledger_backfill_dagster.assets.extract import extracted_source
from ledger_backfill_dagster.ledger.accounts import (
    AccountsFileError,
    account_currencies,
    load_accounts,
    read_accounts_file,
)
from ledger_backfill_dagster.partitions import daily_partitions
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.settings import BackfillSettings
from ledger_backfill_dagster.transform import TransformRules, load_mapping, transform


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    deps=[extracted_source],
)
def transformed_entries(
    context: dg.AssetExecutionContext, settings: BackfillSettings, ledger_db: LedgerDatabase
) -> dg.MaterializeResult:
    """Each day's rows mapped onto the ledger entry contract: account and transaction type
    mapping, defaults (LEDGER_ID, fiat), trimmed amounts and currencies, UTC timestamps,
    deterministic reference ids where the source has none, metadata as a JSON object, and the
    credit side of FX entries. Loads ACCOUNTS_FILE into bank_accounts first."""
    s = stage(context, settings)
    try:
        with ledger_db.connection() as conn:
            if settings.accounts_file:
                added = load_accounts(conn, read_accounts_file(settings.accounts_file))
                context.log.info(f"chart of accounts: {added} new account(s) loaded")
            currencies = account_currencies(conn)
        rules = TransformRules(
            default_ledger_id=settings.ledger_id,
            account_map=load_mapping(settings.account_map_file),
            transaction_type_map=load_mapping(settings.transaction_type_map_file),
            account_currencies=currencies,
        )
    except (OSError, AccountsFileError, ValueError) as exc:
        raise source_failure(exc) from exc
    total = generated = 0
    for key in s.keys:
        staged = s.store.read_extracted(s.source.source_key, key)
        frame = transform(staged, rules)
        s.store.write_frame(s.source.source_key, "transformed", key, frame)
        total += len(frame)
        generated += int(frame["reference_generated"].sum())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(total),
            "generated_reference_ids": dg.MetadataValue.int(generated),
            "accounts_known": dg.MetadataValue.int(len(currencies)),
            "partitions": dg.MetadataValue.int(len(s.keys)),
        }
    )
