-- loads/unfinished.sql
-- The initial load that has not built its indexes again yet, if any (at most one).
SELECT id, source_id, run_id, status, dropped_indexes
  FROM ledger_backfill_loads
 WHERE status <> 'DONE'
