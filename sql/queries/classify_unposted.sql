-- classify_unposted.sql
-- Every staged row the batch did not insert matches an entry already in the ledger (possibly one
-- inserted earlier in this same batch). Name the outcome:
--   ALREADY_POSTED  the same source row posted it before (a resumed or repeated run): success;
--   DUPLICATE       another row posted identical content: skipped and counted;
--   CONFLICT        the ledger holds different content under that reference: held, never posted.
SELECT s.source_row_id,
       s.line_number,
       s.ledger_id,
       s.reference_id,
       e.id AS existing_entry_id,
       CASE
           WHEN e.content_fingerprint <> ledger_entry_fingerprint(
                    s.ledger_id, s.debit_account_id, s.credit_account_id, s.amount,
                    s.currency_code, s.credit_amount, s.credit_currency_code, s.asset_type,
                    s.transaction_type, s.reference_id, s.timestamp_utc, s.fx_rate, s.metadata)
               THEN 'CONFLICT'
           WHEN e.backfill_source_id = %(source_id)s AND e.source_row_id = s.source_row_id
               THEN 'ALREADY_POSTED'
           ELSE 'DUPLICATE'
       END AS outcome
  FROM post_stage s
  LEFT JOIN ledger_entries e
    ON e.ledger_id = s.ledger_id AND e.reference_id = s.reference_id
 WHERE s.entry_id IS NULL
 ORDER BY s.source_row_id
