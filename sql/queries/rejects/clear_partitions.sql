-- rejects/clear_partitions.sql
-- rejects/clear_stage.sql for many partitions at once: one DELETE instead of one per partition.
-- Also what a restarted partition's checkpoint clears (stage 'post': rows the database refused
-- at posting, which the run posts again and quarantines anew if refused).
-- Parameters: source_id, stage, partition_keys (text[]).
DELETE FROM ledger_backfill_rejects
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND partition_key = ANY(%(partition_keys)s)
