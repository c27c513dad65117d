-- rollback/undo_reset_state.sql
-- Make the undone partitions backfillable again: remove their checkpoints and the duplicate,
-- conflict and reject rows of the undone work (of the given run only, for a scope by run), plus
-- the duplicate/conflict rows elsewhere that pointed at a deleted entry. For a whole-source scope
-- the rows rejected without a partition go too. Returns what was removed, for the audit log.
WITH own AS (
    SELECT DISTINCT source_id, partition_key FROM undo_partitions WHERE NOT dependent
),
duplicates AS (
    DELETE FROM ledger_backfill_duplicates d
     WHERE ((d.source_id, d.partition_key) IN (SELECT source_id, partition_key FROM own)
            AND (%(run_id)s::TEXT IS NULL OR d.run_id = %(run_id)s))
        OR d.existing_entry_id IN (SELECT entry_id FROM undo_targets WHERE %(deleting)s)
    RETURNING 1
),
conflicts AS (
    DELETE FROM ledger_backfill_conflicts c
     WHERE ((c.source_id, c.partition_key) IN (SELECT source_id, partition_key FROM own)
            AND (%(run_id)s::TEXT IS NULL OR c.run_id = %(run_id)s))
        OR c.existing_entry_id IN (SELECT entry_id FROM undo_targets WHERE %(deleting)s)
    RETURNING 1
),
rejects AS (
    DELETE FROM ledger_backfill_rejects r
     WHERE ((r.source_id, r.source_type, r.partition_key) IN
                (SELECT source_id, source_type, partition_key FROM undo_partitions
                  WHERE NOT dependent)
            AND (%(run_id)s::TEXT IS NULL OR r.run_id = %(run_id)s))
        OR (%(whole_source)s AND r.partition_key IS NULL AND r.source_id = %(source_id)s
            AND (%(source_type)s::TEXT IS NULL OR r.source_type = %(source_type)s))
    RETURNING 1
),
checkpoints AS (
    DELETE FROM ledger_backfill_checkpoints c
     USING undo_partitions p
     WHERE c.source_id = p.source_id
       AND c.source_type = p.source_type
       AND c.partition_key = p.partition_key
    RETURNING c.source_id, c.source_type, c.partition_key, c.status, c.total_processed,
              c.total_successful, c.total_duplicates, c.total_conflicts, c.total_rejected,
              c.run_id, p.dependent
)
SELECT (SELECT count(*) FROM duplicates) AS duplicates_removed,
       (SELECT count(*) FROM conflicts)  AS conflicts_removed,
       (SELECT count(*) FROM rejects)    AS rejects_removed,
       (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.source_id, c.partition_key), '[]')
          FROM checkpoints c)            AS checkpoints_reset
