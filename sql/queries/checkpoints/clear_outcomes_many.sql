-- checkpoints/clear_outcomes_many.sql
-- What a restarted checkpoint clears (checkpoints._clear_outcomes), for one partition or many:
-- the duplicates and conflicts earlier runs recorded, which this run classifies anew.
-- Parameters: source_id, partition_keys (text[]).
WITH duplicates AS (
    DELETE FROM ledger_backfill_duplicates
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s::TEXT[])
)
DELETE FROM ledger_backfill_conflicts
 WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s::TEXT[])
