-- rollback/rollback_scope.sql
-- The entries a rollback selects, by lineage only: source, source type, partition range and run
-- (any combination, at least one given; never a reference-id prefix). Entries without lineage
-- (posted outside a backfill) are never selected. The caller refuses a scope that holds
-- CORRECTION entries: a correction did not move the stored balance it explains, so undoing it
-- is a counter-correction, not a rollback.
INSERT INTO chain_roots (entry_id)
SELECT id
  FROM ledger_entries
 WHERE (backfill_source_id IS NOT NULL OR backfill_run_id IS NOT NULL)
   AND (%(source_id)s::TEXT IS NULL OR backfill_source_id = %(source_id)s)
   AND (%(source_type)s::TEXT IS NULL OR backfill_source_type = %(source_type)s)
   AND (%(first)s::TEXT IS NULL OR backfill_partition BETWEEN %(first)s AND %(last)s)
   AND (%(run_id)s::TEXT IS NULL OR backfill_run_id = %(run_id)s)
