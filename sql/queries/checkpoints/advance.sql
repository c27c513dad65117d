-- checkpoints/advance.sql
-- Advance a checkpoint by one batch, in the batch's own transaction (ledger/posting.py). Guarded
-- by the last row the poster knows was committed: when a commit went through but its
-- acknowledgement was lost (connection cut, server restart) the retried batch finds the
-- checkpoint already past it and updates nothing (row count 0), so the counters are never
-- advanced twice.
-- Parameters: id, previous_last_id, last_id, last_ts, processed, successful, duplicates,
-- conflicts (conflicts also count as failed).
UPDATE ledger_backfill_checkpoints
   SET last_processed_id = %(last_id)s,
       last_processed_timestamp = %(last_ts)s,
       total_processed = total_processed + %(processed)s,
       total_successful = total_successful + %(successful)s,
       total_failed = total_failed + %(conflicts)s,
       total_duplicates = total_duplicates + %(duplicates)s,
       total_conflicts = total_conflicts + %(conflicts)s,
       batches_committed = batches_committed + 1,
       last_checkpoint_at = NOW()
 WHERE id = %(id)s
   AND last_processed_id IS NOT DISTINCT FROM %(previous_last_id)s
