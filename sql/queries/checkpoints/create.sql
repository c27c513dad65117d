-- checkpoints/create.sql
-- The checkpoint of one (source, source type, partition), created on first sight; an existing
-- one is left as it is (checkpoints/lock.sql reads it next).
-- Parameters (positional): source_id, source_type, partition_key.
INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)
VALUES (%s, %s, %s)
    ON CONFLICT (source_id, source_type, partition_key) DO NOTHING
