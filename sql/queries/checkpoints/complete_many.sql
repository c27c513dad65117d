-- checkpoints/complete_many.sql
-- checkpoints/finish.sql with COMPLETED for a group, each checkpoint's run summary merged into
-- its metadata.
-- Parameters: ids (bigint[]), metadata (jsonb[], one per id).
UPDATE ledger_backfill_checkpoints c
   SET status = 'COMPLETED', error_message = NULL, last_checkpoint_at = NOW(),
       completed_at = NOW(), metadata = coalesce(c.metadata, '{}'::jsonb) || m.metadata
  FROM unnest(%(ids)s::BIGINT[], %(metadata)s::JSONB[]) AS m (id, metadata)
 WHERE c.id = m.id
