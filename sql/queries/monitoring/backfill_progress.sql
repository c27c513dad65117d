-- monitoring/backfill_progress.sql
-- The seed's "Check backfill progress" and "Check for stalled backfills" monitoring queries in
-- one: every checkpoint (one per source and day), how long since its last checkpoint, whether it
-- is stalled (IN_PROGRESS with no checkpoint for longer than %(stall)s seconds), and for a running
-- partition its rate and ETA from its own progress. %(source)s NULL means every source.
SELECT source_id, source_type, partition_key, status,
       total_to_process, total_processed, total_successful, total_failed,
       total_duplicates, total_conflicts, total_rejected, batches_committed,
       last_processed_id, started_at, last_checkpoint_at, completed_at, run_id,
       EXTRACT(EPOCH FROM NOW()::timestamp - last_checkpoint_at)::BIGINT
           AS seconds_since_last_checkpoint,
       (status = 'IN_PROGRESS'
        AND last_checkpoint_at < NOW()::timestamp - make_interval(secs => %(stall)s)) AS stalled,
       CASE WHEN status = 'IN_PROGRESS' AND total_processed > 0
                 AND last_checkpoint_at > started_at
            THEN round(total_processed / EXTRACT(EPOCH FROM last_checkpoint_at - started_at), 1)
       END AS entries_per_second,
       CASE WHEN status = 'IN_PROGRESS' AND total_processed > 0
                 AND last_checkpoint_at > started_at AND total_to_process IS NOT NULL
            THEN round(GREATEST(total_to_process - total_processed, 0)
                       * EXTRACT(EPOCH FROM last_checkpoint_at - started_at) / total_processed)::BIGINT
       END AS eta_seconds,
       error_message
  FROM ledger_backfill_checkpoints
 WHERE (%(source)s::TEXT IS NULL OR source_id = %(source)s)
 ORDER BY source_id, partition_key
