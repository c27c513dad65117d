-- monitoring/backfill_completion.sql
-- The seed's "Verify backfill completion" query, by lineage instead of a reference prefix: per
-- source, how many entries the backfill posted and the earliest and latest of their timestamps,
-- beside how many of its partitions are COMPLETED. %(source)s NULL means every source.
WITH entries AS (
    SELECT backfill_source_id AS source_id, COUNT(*) AS total_entries,
           MIN(timestamp_utc) AS earliest, MAX(timestamp_utc) AS latest
      FROM ledger_entries
     WHERE backfill_source_id IS NOT NULL
       AND (%(source)s::TEXT IS NULL OR backfill_source_id = %(source)s)
     GROUP BY backfill_source_id
), parts AS (
    SELECT source_id, COUNT(*) AS partitions,
           COUNT(*) FILTER (WHERE status = 'COMPLETED') AS partitions_completed,
           COALESCE(SUM(total_to_process), 0)::BIGINT AS total_to_process,
           COALESCE(SUM(total_processed), 0)::BIGINT AS total_processed
      FROM ledger_backfill_checkpoints
     WHERE (%(source)s::TEXT IS NULL OR source_id = %(source)s)
     GROUP BY source_id
)
SELECT COALESCE(p.source_id, e.source_id) AS source_id,
       COALESCE(e.total_entries, 0) AS total_entries, e.earliest, e.latest,
       COALESCE(p.partitions, 0) AS partitions,
       COALESCE(p.partitions_completed, 0) AS partitions_completed,
       COALESCE(p.total_to_process, 0) AS total_to_process,
       COALESCE(p.total_processed, 0) AS total_processed
  FROM parts p FULL JOIN entries e ON e.source_id = p.source_id
 ORDER BY 1
