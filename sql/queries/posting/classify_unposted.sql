-- posting/classify_unposted.sql
-- Every staged row the batch did not insert matches an entry already in the ledger (possibly one
-- inserted earlier in this same batch). Name the outcome:
--   ALREADY_POSTED  this source row posted exactly this entry before (a resumed, repeated or
--                   re-exported run): success;
--   DUPLICATE       another row posted identical content: skipped and counted;
--   CONFLICT        the ledger holds different content under that reference, or this source row
--                   was posted in another form (a setting changed), or the row is held beside a
--                   vanished one (hold_new_rows.sql): held, never posted.
-- An entry posted before source row keys existed (NULL key) counts as this row's own when it came
-- from this source with the same content, and the row is the first of its identity (occurrence 1)
-- or sits on the entry's old source_row_id.
WITH unposted AS (
    SELECT s.*,
           ledger_entry_fingerprint(
               s.ledger_id, s.debit_account_id, s.credit_account_id, s.amount,
               s.currency_code, s.credit_amount, s.credit_currency_code, s.asset_type,
               s.transaction_type, s.reference_id, s.timestamp_utc, s.fx_rate, s.metadata)
               AS fingerprint,
           -- Looked up again: a concurrent run may have posted this source row since
           -- mark_known_rows.sql looked (then the insert met the key's unique index).
           coalesce(s.known_entry_id,
                    (SELECT e.id FROM ledger_entries e
                      WHERE e.backfill_source_id = %(source_id)s
                        AND e.source_row_key = s.source_row_key)) AS known_id
      FROM post_stage s
     WHERE s.entry_id IS NULL
)
SELECT s.partition_key,
       s.source_row_id,
       s.line_number,
       s.ledger_id,
       s.reference_id,
       coalesce(s.held_against, s.known_id, e.id) AS existing_entry_id,
       CASE
           WHEN s.held_against IS NOT NULL THEN 'CONFLICT'
           WHEN k.id IS NOT NULL THEN
               CASE WHEN k.ledger_id = s.ledger_id AND k.reference_id = s.reference_id
                         AND k.content_fingerprint = s.fingerprint
                    THEN 'ALREADY_POSTED' ELSE 'CONFLICT' END
           WHEN e.content_fingerprint <> s.fingerprint THEN 'CONFLICT'
           WHEN e.backfill_source_id = %(source_id)s
                AND (e.source_row_key = s.source_row_key
                     OR (e.source_row_key IS NULL
                         AND (e.source_row_id = s.source_row_id OR s.source_row_occurrence = 1)))
               THEN 'ALREADY_POSTED'
           ELSE 'DUPLICATE'
       END AS outcome,
       -- the existing entry is this very source row's (held, counted once: not also posted)
       (s.held_against IS NOT NULL OR s.known_id IS NOT NULL) AS same_source_row
  FROM unposted s
  LEFT JOIN ledger_entries k ON k.id = s.known_id
  LEFT JOIN ledger_entries e
    ON s.known_id IS NULL AND e.ledger_id = s.ledger_id AND e.reference_id = s.reference_id
 ORDER BY s.source_row_id
