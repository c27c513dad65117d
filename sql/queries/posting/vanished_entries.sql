-- posting/vanished_entries.sql
-- Entries this source posted in this partition whose source row is no longer in it (its key is
-- not among the partition's current keys): the candidates a new row without a reference may be
-- the correction of (hold_new_rows.sql).
SELECT e.id
  FROM ledger_entries e
 WHERE e.backfill_source_id = %(source_id)s
   AND e.backfill_partition = %(partition_key)s
   AND e.source_row_key IS NOT NULL
   AND NOT (e.source_row_key = ANY(%(keys)s))
 ORDER BY e.id
