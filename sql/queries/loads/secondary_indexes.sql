-- loads/secondary_indexes.sql
-- The indexes an initial load drops and builds again after it: every index of ledger_entries and
-- dual_ledger_outbox that enforces nothing. Never the primary keys, never a unique index
-- ((ledger_id, reference_id), (backfill_source_id, source_row_key), the outbox's one row per
-- entry): exactly-once, duplicates and conflicts rest on them throughout the load.
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid IN ('ledger_entries'::regclass, 'dual_ledger_outbox'::regclass)
   AND NOT i.indisunique
   AND NOT i.indisprimary
   AND NOT i.indisexclusion
 ORDER BY c.relname
