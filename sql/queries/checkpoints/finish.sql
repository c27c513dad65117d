-- checkpoints/finish.sql
-- Move a checkpoint to COMPLETED, FAILED or PAUSED with its message (redacted by the caller),
-- stamping completed_at only for COMPLETED, and merge the run's summary into its metadata.
-- Parameters (positional): status, error_message, status (again), metadata (jsonb), id.
UPDATE ledger_backfill_checkpoints
   SET status = %s, error_message = %s, last_checkpoint_at = NOW(),
       completed_at = CASE WHEN %s = 'COMPLETED' THEN NOW() ELSE NULL END,
       metadata = coalesce(metadata, '{}'::jsonb) || %s
 WHERE id = %s
