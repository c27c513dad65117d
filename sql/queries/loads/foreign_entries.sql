-- loads/foreign_entries.sql
-- Entries this backfill's source did not write (another source's, one posted outside the
-- pipeline, or one from before source row keys): an initial load refuses to run over them.
-- Parameters (positional): source_id.
SELECT count(*) AS foreign_entries
  FROM ledger_entries
 WHERE backfill_source_id IS DISTINCT FROM %s
    OR source_row_key IS NULL
