-- reconcile/partition_accounting.sql
-- Where every valid source row of each partition ended: posted (entries whose lineage names this
-- source and partition), skipped as a duplicate, held as a conflict, or rejected by the contract.
WITH keys AS (SELECT unnest(%(partition_keys)s::TEXT[]) AS partition_key),
-- An entry whose own source row is now held as a conflict (posted before in another form, or
-- vanished beside a new row: same_source_row) is that row's fate once, as held, not also posted.
posted AS (
    SELECT e.backfill_partition AS partition_key, count(*) AS n
      FROM ledger_entries e
     WHERE e.backfill_source_id = %(source_id)s AND e.backfill_partition = ANY(%(partition_keys)s)
       AND NOT EXISTS (SELECT 1 FROM ledger_backfill_conflicts c
                        WHERE c.source_id = %(source_id)s AND c.same_source_row
                          AND c.existing_entry_id = e.id)
     GROUP BY 1
),
duplicates AS (
    SELECT partition_key, count(*) AS n FROM ledger_backfill_duplicates
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s) GROUP BY 1
),
conflicts AS (
    SELECT partition_key, count(*) AS n FROM ledger_backfill_conflicts
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s) GROUP BY 1
),
rejected AS (
    SELECT partition_key, count(*) AS n FROM ledger_backfill_rejects
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s) GROUP BY 1
),
checkpoint AS (
    SELECT partition_key, status FROM ledger_backfill_checkpoints
     WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s)
)
SELECT k.partition_key,
       coalesce(p.n, 0) AS posted,
       coalesce(d.n, 0) AS duplicates,
       coalesce(c.n, 0) AS conflicts,
       coalesce(r.n, 0) AS rejected,
       cp.status AS checkpoint_status
  FROM keys k
  LEFT JOIN posted p USING (partition_key)
  LEFT JOIN duplicates d USING (partition_key)
  LEFT JOIN conflicts c USING (partition_key)
  LEFT JOIN rejected r USING (partition_key)
  LEFT JOIN checkpoint cp USING (partition_key)
 ORDER BY k.partition_key
