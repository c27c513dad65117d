-- checkpoints/last_committed.sql
-- The last source row a checkpoint has committed: after checkpoints/advance.sql updated nothing,
-- tells a batch that committed before (its acknowledgement lost) from a checkpoint that moved
-- under the run.
-- Parameters (positional): id.
SELECT last_processed_id FROM ledger_backfill_checkpoints WHERE id = %s
