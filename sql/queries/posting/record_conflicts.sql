-- posting/record_conflicts.sql
-- Hold each conflict with both versions and the fields that differ, against the entry
-- classify_unposted.sql matched (same reference, the same source row posted otherwise, or the
-- vanished row a new one is held beside). A row that moved is updated where it is now.
WITH chosen AS (
    SELECT * FROM unnest(%(source_row_ids)s::BIGINT[], %(existing_ids)s::BIGINT[],
                         %(same_source_row)s::BOOLEAN[])
        AS c (source_row_id, existing_entry_id, same_source_row)
),
pairs AS (
    SELECT s.partition_key, s.source_row_id, s.line_number, s.ledger_id, s.reference_id,
           e.id AS existing_entry_id,
           c.same_source_row,
           jsonb_build_object(
               'ledger_id', e.ledger_id, 'debit_account_id', e.debit_account_id,
               'credit_account_id', e.credit_account_id, 'amount', e.amount,
               'currency_code', e.currency_code, 'credit_amount', e.credit_amount,
               'credit_currency_code', e.credit_currency_code, 'asset_type', e.asset_type,
               'transaction_type', e.transaction_type, 'timestamp_utc', e.timestamp_utc,
               'fx_rate', e.fx_rate, 'metadata', e.metadata,
               'backfill_source_id', e.backfill_source_id,
               'backfill_partition', e.backfill_partition,
               'reference_id', e.reference_id) AS existing_entry,
           jsonb_build_object(
               'ledger_id', s.ledger_id, 'debit_account_id', s.debit_account_id,
               'credit_account_id', s.credit_account_id, 'amount', s.amount,
               'currency_code', s.currency_code, 'credit_amount', s.credit_amount,
               'credit_currency_code', s.credit_currency_code, 'asset_type', s.asset_type,
               'transaction_type', s.transaction_type, 'timestamp_utc', s.timestamp_utc,
               'fx_rate', s.fx_rate, 'metadata', s.metadata,
               'reference_id', s.reference_id) AS incoming_entry
      FROM chosen c
      JOIN post_stage s USING (source_row_id)
      JOIN ledger_entries e ON e.id = c.existing_entry_id
)
INSERT INTO ledger_backfill_conflicts (
    source_id, partition_key, source_row_id, line_number, ledger_id, reference_id,
    existing_entry_id, existing_entry, incoming_entry, differing_fields, same_source_row, run_id)
SELECT %(source_id)s, partition_key, source_row_id, line_number, ledger_id, reference_id,
       existing_entry_id, existing_entry, incoming_entry,
       ARRAY(SELECT i.key FROM jsonb_each(incoming_entry) i
              WHERE i.value IS DISTINCT FROM existing_entry -> i.key
              ORDER BY i.key),
       same_source_row, %(run_id)s
  FROM pairs
    ON CONFLICT (source_id, source_row_id) DO UPDATE
   SET partition_key = EXCLUDED.partition_key, line_number = EXCLUDED.line_number,
       ledger_id = EXCLUDED.ledger_id, reference_id = EXCLUDED.reference_id,
       existing_entry_id = EXCLUDED.existing_entry_id, existing_entry = EXCLUDED.existing_entry,
       incoming_entry = EXCLUDED.incoming_entry, differing_fields = EXCLUDED.differing_fields,
       same_source_row = EXCLUDED.same_source_row, run_id = EXCLUDED.run_id
