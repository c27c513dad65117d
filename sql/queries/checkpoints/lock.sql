-- checkpoints/lock.sql
-- The checkpoint of one (source, source type, partition), locked until the transaction ends so
-- that deciding between skip, resume and restart (checkpoints/resume.sql) cannot race.
-- Parameters (positional): source_id, source_type, partition_key.
SELECT * FROM ledger_backfill_checkpoints
 WHERE source_id = %s AND source_type = %s AND partition_key = %s
   FOR UPDATE
