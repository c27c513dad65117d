-- posting/record_duplicates.sql
-- Keep each skipped duplicate queryable, against the entry classify_unposted.sql matched. A
-- re-run records the same source row once; a row that moved (another partition or line after
-- a re-export) is updated where it is now.
WITH chosen AS (
    SELECT * FROM unnest(%(source_row_ids)s::BIGINT[], %(existing_ids)s::BIGINT[])
        AS c (source_row_id, existing_entry_id)
)
INSERT INTO ledger_backfill_duplicates (
    source_id, partition_key, source_row_id, line_number, ledger_id, reference_id,
    existing_entry_id, run_id)
SELECT %(source_id)s, s.partition_key, s.source_row_id, s.line_number, s.ledger_id,
       s.reference_id, c.existing_entry_id, %(run_id)s
  FROM chosen c
  JOIN post_stage s USING (source_row_id)
    ON CONFLICT (source_id, source_row_id) DO UPDATE
   SET partition_key = EXCLUDED.partition_key, line_number = EXCLUDED.line_number,
       ledger_id = EXCLUDED.ledger_id, reference_id = EXCLUDED.reference_id,
       existing_entry_id = EXCLUDED.existing_entry_id, run_id = EXCLUDED.run_id
