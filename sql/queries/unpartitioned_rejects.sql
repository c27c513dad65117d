-- unpartitioned_rejects.sql
-- Rejects of a source that no partition holds (a row whose timestamp places it in no day).
SELECT count(*) FROM ledger_backfill_rejects WHERE source_id = %s AND partition_key IS NULL
