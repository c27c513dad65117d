-- dual_ledger/missing_outbox.sql
-- The seed's 6.3 "every entry has a corresponding outbox record", scoped by lineage (the source
-- and its partitions) instead of a 'BACKFILL-' reference prefix: each backfilled entry that has
-- no dual_ledger_outbox row, so the other ledger would never hear of it.
SELECT e.backfill_partition AS partition_key, e.id AS ledger_entry_id, e.ledger_id,
       e.reference_id
  FROM ledger_entries e
 WHERE e.backfill_source_id = %(source_id)s
   AND e.backfill_partition = ANY(%(partition_keys)s)
   AND NOT EXISTS (SELECT 1 FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id)
 ORDER BY e.backfill_partition, e.id
