-- record_duplicates.sql
-- Keep each skipped duplicate queryable; a re-run of the same source row records it once.
INSERT INTO ledger_backfill_duplicates (
    source_id, partition_key, source_row_id, line_number, ledger_id, reference_id,
    existing_entry_id, run_id)
SELECT %(source_id)s, %(partition_key)s, s.source_row_id, s.line_number, s.ledger_id,
       s.reference_id, e.id, %(run_id)s
  FROM post_stage s
  JOIN ledger_entries e ON e.ledger_id = s.ledger_id AND e.reference_id = s.reference_id
 WHERE s.source_row_id = ANY(%(source_row_ids)s)
    ON CONFLICT (source_id, source_row_id) DO NOTHING
