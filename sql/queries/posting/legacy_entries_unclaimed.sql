-- posting/legacy_entries_unclaimed.sql
-- Entries this source posted before source row keys existed (migration 008) on the lines the
-- partition's rows now sit on, whose (ledger_id, reference_id) none of those rows carries: their
-- source row now has another identity (a changed setting) or has gone. mark_known_rows.sql pairs
-- each with the row now on its line. %(row_ids)s, %(ledger_ids)s and %(reference_ids)s are the
-- partition's rows.
WITH plan AS (
    SELECT * FROM unnest(%(ledger_ids)s::TEXT[], %(reference_ids)s::TEXT[])
        AS p (ledger_id, reference_id)
)
SELECT e.id
  FROM ledger_entries e
 WHERE e.backfill_source_id = %(source_id)s
   AND e.source_row_key IS NULL
   AND e.source_row_id = ANY(%(row_ids)s)
   AND NOT EXISTS (SELECT 1 FROM plan p
                    WHERE p.ledger_id = e.ledger_id AND p.reference_id = e.reference_id)
