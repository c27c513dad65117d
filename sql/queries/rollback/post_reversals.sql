-- rollback/post_reversals.sql
-- Post the reversal of every entry in undo_targets, set-based like post_batch.sql: sides swapped,
-- both amounts exactly the original's (an FX entry is reversed without re-converting, so its
-- fx_rate is left NULL and the original rate kept in metadata), reference
-- 'REVERSAL-' || ledger || '-' || reference (deterministic; the unique key makes reversing an
-- entry twice impossible), each touched balance moved once by its net, one PENDING outbox row per
-- reversal so the SCB side hears of it. Lineage: source 'ledger_rollback', type 'REVERSAL'.
WITH originals AS (
    SELECT e.*
      FROM undo_targets t
      JOIN ledger_entries e ON e.id = t.entry_id
),
reversals AS (
    SELECT o.id AS original_id,
           o.ledger_id,
           o.credit_account_id AS debit_account_id,
           o.debit_account_id AS credit_account_id,
           o.credit_amount AS amount,
           o.credit_currency_code AS currency_code,
           o.amount AS credit_amount,
           o.currency_code AS credit_currency_code,
           o.asset_type,
           'REVERSAL'::TEXT AS transaction_type,
           'REVERSAL-' || o.ledger_id || '-' || o.reference_id AS reference_id,
           now() AS timestamp_utc,
           NULL::NUMERIC AS fx_rate,
           jsonb_build_object(
               'reversal_of', jsonb_build_object(
                   'entry_id', o.id, 'ledger_id', o.ledger_id, 'reference_id', o.reference_id,
                   'transaction_type', o.transaction_type, 'fx_rate', o.fx_rate,
                   'backfill_source_id', o.backfill_source_id,
                   'backfill_partition', o.backfill_partition,
                   'backfill_run_id', o.backfill_run_id),
               'reason', %(reason)s::TEXT,
               'run_id', %(run_id)s::TEXT) AS metadata
      FROM originals o
),
inserted AS (
    INSERT INTO ledger_entries (
        ledger_id, debit_account_id, credit_account_id, amount, currency_code,
        credit_amount, credit_currency_code, asset_type, transaction_type, reference_id,
        timestamp_utc, fx_rate, metadata, backfill_source_id, backfill_source_type,
        backfill_partition, backfill_run_id, source_row_id, content_fingerprint)
    SELECT ledger_id, debit_account_id, credit_account_id, amount, currency_code,
           credit_amount, credit_currency_code, asset_type, transaction_type, reference_id,
           timestamp_utc, fx_rate, metadata, 'ledger_rollback', 'REVERSAL',
           NULL, %(run_id)s, NULL,
           ledger_entry_fingerprint(ledger_id, debit_account_id, credit_account_id, amount,
               currency_code, credit_amount, credit_currency_code, asset_type,
               transaction_type, reference_id, timestamp_utc, fx_rate, metadata)
      FROM reversals
     ORDER BY original_id
    RETURNING id, ledger_id, reference_id, debit_account_id, credit_account_id, amount,
              credit_amount
),
movements AS (
    SELECT debit_account_id AS account_id, amount AS delta FROM inserted
    UNION ALL
    SELECT credit_account_id, -credit_amount FROM inserted
),
net AS (
    SELECT account_id, sum(delta) AS delta FROM movements GROUP BY account_id
),
balances AS (
    UPDATE bank_accounts b
       SET balance = b.balance + net.delta,
           available_balance = b.available_balance + net.delta,
           updated_at = now()
      FROM net
     WHERE b.id = net.account_id AND net.delta <> 0
    RETURNING b.id
),
outbox AS (
    INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)
    SELECT id, ledger_id, reference_id FROM inserted
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS reversals_posted,
       (SELECT count(*) FROM outbox)   AS outbox_rows,
       (SELECT count(*) FROM balances) AS accounts_moved
