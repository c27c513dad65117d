-- checkpoints/create_many.sql
-- checkpoints/create.sql for a group of small partitions posted in one batch
-- (ledger/group_posting.py): each missing checkpoint created, existing ones left as they are.
-- Parameters: source_id, source_type, partition_keys (text[]).
INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)
SELECT %(source_id)s, %(source_type)s, k
  FROM unnest(%(partition_keys)s::TEXT[]) AS k
 ORDER BY k
    ON CONFLICT (source_id, source_type, partition_key) DO NOTHING
