-- checkpoints/end_group.sql
-- A group's checkpoints that did not complete (ledger/group_posting.py) end PAUSED or FAILED
-- with the reason, as a single partition's would. Only those this run still holds IN_PROGRESS:
-- once the group's locks are gone another run may have taken a day over, and its status is its.
-- Parameters: ids (bigint[]), run_id, status, message.
UPDATE ledger_backfill_checkpoints
   SET status = %(status)s, error_message = %(message)s, last_checkpoint_at = NOW(),
       completed_at = NULL
 WHERE id = ANY(%(ids)s::BIGINT[])
   AND run_id = %(run_id)s
   AND status = 'IN_PROGRESS'
