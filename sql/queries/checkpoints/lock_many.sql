-- checkpoints/lock_many.sql
-- checkpoints/lock.sql for a group: the group's checkpoints, locked in partition order until
-- the transaction ends.
-- Parameters: source_id, source_type, partition_keys (text[]).
SELECT * FROM ledger_backfill_checkpoints
 WHERE source_id = %(source_id)s AND source_type = %(source_type)s
   AND partition_key = ANY(%(partition_keys)s::TEXT[])
 ORDER BY partition_key
   FOR UPDATE
