-- checkpoints/clear_outcomes_many.sql
-- What a restarted checkpoint clears (checkpoints.open_checkpoint), for a group of partitions:
-- the duplicates and conflicts earlier runs recorded, which this run classifies anew.
-- Parameters: source_id, partition_keys (text[]).
WITH duplicates AS (
    DELETE FROM ledger_backfill_duplicates
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s::TEXT[])
)
DELETE FROM ledger_backfill_conflicts
 WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s::TEXT[])
