-- maintenance/post_correction.sql
-- Post one correction entry through post_ledger_entry (005): the ledger's own path, with its
-- balance moves and outbox row, lineage CORRECTION. Returns the new entry's id.
-- Parameters: ledger, debit, credit, amount, currency, asset, type, reference, metadata (jsonb),
-- source, source_type, run.
SELECT post_ledger_entry(
    p_ledger_id => %(ledger)s, p_debit_account_id => %(debit)s,
    p_credit_account_id => %(credit)s, p_amount => %(amount)s,
    p_currency_code => %(currency)s, p_asset_type => %(asset)s,
    p_transaction_type => %(type)s, p_reference_id => %(reference)s,
    p_metadata => %(metadata)s, p_backfill_source_id => %(source)s,
    p_backfill_source_type => %(source_type)s, p_backfill_run_id => %(run)s)
