-- rejects/unpartitioned_count.sql
-- How many rejects of a source no partition holds (a row whose timestamp places it in no day).
-- Parameters (positional): source_id.
SELECT count(*) FROM ledger_backfill_rejects WHERE source_id = %s AND partition_key IS NULL
