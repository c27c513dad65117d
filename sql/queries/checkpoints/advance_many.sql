-- checkpoints/advance_many.sql
-- checkpoints/advance.sql for a group's one batch, in its transaction: each checkpoint with rows
-- in the batch moves past its partition's last row. Guarded like advance.sql: only a checkpoint
-- still at the start (no committed batch) moves, so a retried batch whose first commit went
-- through updates none (row count below the group's) and is rolled back.
-- Parameters: ids (bigint[]), last_ids, last_ts (timestamp[]), processed, successful,
-- duplicates, conflicts (arrays, one per id).
UPDATE ledger_backfill_checkpoints c
   SET last_processed_id = a.last_id,
       last_processed_timestamp = a.last_ts,
       total_processed = c.total_processed + a.processed,
       total_successful = c.total_successful + a.successful,
       total_failed = c.total_failed + a.conflicts,
       total_duplicates = c.total_duplicates + a.duplicates,
       total_conflicts = c.total_conflicts + a.conflicts,
       batches_committed = c.batches_committed + 1,
       last_checkpoint_at = NOW()
  FROM unnest(%(ids)s::BIGINT[], %(last_ids)s::TEXT[], %(last_ts)s::TIMESTAMP[],
              %(processed)s::BIGINT[], %(successful)s::BIGINT[], %(duplicates)s::BIGINT[],
              %(conflicts)s::BIGINT[])
       AS a (id, last_id, last_ts, processed, successful, duplicates, conflicts)
 WHERE c.id = a.id
   AND c.last_processed_id IS NULL
