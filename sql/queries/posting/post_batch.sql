-- posting/post_batch.sql
-- Post the staged batch set-based, in one statement: insert the first occurrence of each
-- (ledger_id, reference_id) (the earliest partition's, then the earliest source row's) unless the
-- ledger already holds it or its source row (mark_known_rows.sql), or it is held
-- (hold_new_rows.sql), write one outbox row per entry, and mark which staged rows were posted
-- (post_stage.entry_id). The balances move afterwards in the same transaction
-- (lock_batch_accounts.sql, then apply_batch_balances.sql): the accounts are locked only for the
-- short end of the batch, so concurrent partitions insert in parallel. Rows not inserted are
-- classified by classify_unposted.sql in a second statement, whose fresh snapshot also sees
-- entries a concurrent batch committed while this one waited.
--
-- The conflict clause below is filled in by posting.py (PartitionPoster._insert_entries): first none,
-- a plain INSERT inside a savepoint, since speculative insertion against three unique indexes
-- cost a fifth of the statement; if a unique key is met (the ledger already holds a reference,
-- or a concurrent run posted the same source row), the savepoint is rolled back and the batch
-- inserted again with ON CONFLICT DO NOTHING, which skips those rows for classification.
-- Only rows whose reference repeats in the batch (post_stage.reference_repeats, set before the
-- COPY) are ranked: the sort of the wide rows cost as much again on batches without repeats.
WITH candidates AS (
    SELECT s.* FROM post_stage s WHERE s.known_entry_id IS NULL AND s.held_against IS NULL
),
staged AS (
    SELECT c.*, 1::BIGINT AS occurrence FROM candidates c WHERE NOT c.reference_repeats
    UNION ALL
    SELECT c.*, row_number() OVER (PARTITION BY c.ledger_id, c.reference_id
                                   ORDER BY c.partition_key, c.source_row_id)
      FROM candidates c
     WHERE c.reference_repeats
),
inserted AS (
    INSERT INTO ledger_entries (
        ledger_id, debit_account_id, credit_account_id, amount, currency_code,
        credit_amount, credit_currency_code, asset_type, transaction_type, reference_id,
        timestamp_utc, fx_rate, metadata, backfill_source_id, backfill_source_type,
        backfill_partition, backfill_run_id, source_row_id, source_row_key, content_fingerprint)
    SELECT ledger_id, debit_account_id, credit_account_id, amount, currency_code,
           credit_amount, credit_currency_code, asset_type, transaction_type, reference_id,
           timestamp_utc, fx_rate, metadata, %(source_id)s, %(source_type)s,
           partition_key, %(run_id)s, source_row_id, source_row_key,
           ledger_entry_fingerprint(ledger_id, debit_account_id, credit_account_id, amount,
               currency_code, credit_amount, credit_currency_code, asset_type,
               transaction_type, reference_id, timestamp_utc, fx_rate, metadata)
      FROM staged
     WHERE occurrence = 1
     ORDER BY partition_key, source_row_id
    {conflict_clause}
    RETURNING id, ledger_id, reference_id, source_row_id,
              debit_account_id, credit_account_id, amount, credit_amount
),
outbox AS (
    INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)
    SELECT id, ledger_id, reference_id FROM inserted
    RETURNING 1
),
marked AS (
    UPDATE post_stage p
       SET entry_id = inserted.id
      FROM inserted
     WHERE p.source_row_id = inserted.source_row_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted)  AS posted,
       (SELECT count(*) FROM outbox)    AS outbox_rows,
       (SELECT count(*) FROM marked)    AS marked
