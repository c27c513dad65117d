-- rollback/undo_partitions.sql
-- The (source, type, partition) whose backfill state a rollback resets: every partition one of
-- its entries came from and, for a scope by source or partition range (not by run), every
-- partition of that scope with a checkpoint or a rejected row even if it posted nothing.
INSERT INTO undo_partitions (source_id, source_type, partition_key)
SELECT e.backfill_source_id, e.backfill_source_type, e.backfill_partition
  FROM chain_roots r
  JOIN ledger_entries e ON e.id = r.entry_id
 WHERE e.backfill_source_id IS NOT NULL
   AND e.backfill_source_type IS NOT NULL
   AND e.backfill_partition IS NOT NULL
UNION
SELECT source_id, source_type, partition_key
  FROM ledger_backfill_checkpoints
 WHERE %(run_id)s::TEXT IS NULL
   AND (%(source_id)s::TEXT IS NULL OR source_id = %(source_id)s)
   AND (%(source_type)s::TEXT IS NULL OR source_type = %(source_type)s)
   AND (%(first)s::TEXT IS NULL OR partition_key BETWEEN %(first)s AND %(last)s)
UNION
SELECT source_id, source_type, partition_key
  FROM ledger_backfill_rejects
 WHERE %(run_id)s::TEXT IS NULL
   AND partition_key IS NOT NULL
   AND (%(source_id)s::TEXT IS NULL OR source_id = %(source_id)s)
   AND (%(source_type)s::TEXT IS NULL OR source_type = %(source_type)s)
   AND (%(first)s::TEXT IS NULL OR partition_key BETWEEN %(first)s AND %(last)s)
ON CONFLICT DO NOTHING
