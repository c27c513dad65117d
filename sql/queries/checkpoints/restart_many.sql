-- checkpoints/restart_many.sql
-- checkpoints/resume.sql with restart for a group: every checkpoint of the group starts over
-- IN_PROGRESS for this run (none of them had a committed batch of the current plan), with the
-- plan's digest, rows to process and rows rejected. Returns the checkpoints as they now are.
-- Parameters: run_id, ids (bigint[]), digests, to_process, rejected (arrays, one per id).
UPDATE ledger_backfill_checkpoints c
   SET status = 'IN_PROGRESS', run_id = %(run_id)s, plan_digest = p.digest,
       total_to_process = p.to_process, total_rejected = p.rejected,
       error_message = NULL, completed_at = NULL, last_checkpoint_at = NOW(), started_at = NOW(),
       last_processed_id = NULL, last_processed_timestamp = NULL,
       total_processed = 0, total_successful = 0, total_failed = 0, total_duplicates = 0,
       total_conflicts = 0, batches_committed = 0
  FROM unnest(%(ids)s::BIGINT[], %(digests)s::TEXT[], %(to_process)s::BIGINT[],
              %(rejected)s::BIGINT[]) AS p (id, digest, to_process, rejected)
 WHERE c.id = p.id
RETURNING c.*
