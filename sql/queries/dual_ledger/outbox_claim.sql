-- dual_ledger/outbox_claim.sql
-- The outbox relay's next batch: rows in the given statuses after the last id it handled, with
-- the entry each one announces. FOR UPDATE SKIP LOCKED: two relays never deliver the same row,
-- and the lock is held until the batch is marked SENT or FAILED in the same transaction.
SELECT o.id AS outbox_id,
       o.ledger_entry_id,
       o.ledger_id,
       o.reference_id,
       e.debit_account_id,
       e.credit_account_id,
       e.amount::text AS amount,
       e.currency_code,
       e.credit_amount::text AS credit_amount,
       e.credit_currency_code,
       e.asset_type,
       e.transaction_type,
       e.timestamp_utc,
       e.fx_rate::text AS fx_rate,
       e.metadata::text AS metadata,
       e.backfill_source_id
  FROM dual_ledger_outbox o
  JOIN ledger_entries e ON e.id = o.ledger_entry_id
 WHERE o.status = ANY(%(statuses)s)
   AND o.id > %(after)s
   AND (%(source_id)s::text IS NULL OR e.backfill_source_id = %(source_id)s::text)
 ORDER BY o.id
 LIMIT %(limit)s
   FOR UPDATE OF o SKIP LOCKED
