-- rejects/clear_stage.sql
-- Forget the stored rejects of one (source, partition, stage) before the stage's new rejects are
-- written in the same transaction: a re-run after a fix leaves no stale reject behind. A NULL
-- partition_key means the rejects no partition holds.
-- Parameters: source_id, stage, partition_key (may be NULL).
DELETE FROM ledger_backfill_rejects
 WHERE source_id = %(source_id)s AND stage = %(stage)s
   AND partition_key IS NOT DISTINCT FROM %(partition_key)s
