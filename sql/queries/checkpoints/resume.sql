-- checkpoints/resume.sql
-- Put a checkpoint back IN_PROGRESS for a run: either resume after its last committed batch, or
-- (restart: the plan changed, or a COMPLETED partition is redone) start over with every position
-- and counter cleared. Returns the checkpoint as it now is.
-- Parameters: id, run_id, digest (the plan's), to_process, rejected, restart (boolean).
UPDATE ledger_backfill_checkpoints
   SET status = 'IN_PROGRESS', run_id = %(run_id)s, plan_digest = %(digest)s,
       total_to_process = %(to_process)s, total_rejected = %(rejected)s,
       error_message = NULL, completed_at = NULL, last_checkpoint_at = NOW(),
       started_at = CASE WHEN %(restart)s THEN NOW() ELSE started_at END,
       last_processed_id = CASE WHEN %(restart)s THEN NULL ELSE last_processed_id END,
       last_processed_timestamp = CASE WHEN %(restart)s THEN NULL
                                       ELSE last_processed_timestamp END,
       total_processed = CASE WHEN %(restart)s THEN 0 ELSE total_processed END,
       total_successful = CASE WHEN %(restart)s THEN 0 ELSE total_successful END,
       total_failed = CASE WHEN %(restart)s THEN 0 ELSE total_failed END,
       total_duplicates = CASE WHEN %(restart)s THEN 0 ELSE total_duplicates END,
       total_conflicts = CASE WHEN %(restart)s THEN 0 ELSE total_conflicts END,
       batches_committed = CASE WHEN %(restart)s THEN 0 ELSE batches_committed END
 WHERE id = %(id)s
RETURNING *
