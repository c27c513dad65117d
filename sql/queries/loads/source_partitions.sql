-- loads/source_partitions.sql
-- The partitions in which this source already has entries (one scan, at the start of an initial
-- load): only their rows can stand beside a vanished entry (posting/vanished_entries.sql), which
-- the load then looks for without the lineage index.
-- Parameters (positional): source_id.
SELECT DISTINCT backfill_partition
  FROM ledger_entries
 WHERE backfill_source_id = %s AND backfill_partition IS NOT NULL
