-- rejects/by_partition.sql
-- How many rejects (any stage) each of the given partitions of a source holds; a partition with
-- none is absent.
-- Parameters (positional): source_id, partition_keys (text[]).
SELECT partition_key, count(*) FROM ledger_backfill_rejects
 WHERE source_id = %s AND partition_key = ANY(%s) GROUP BY partition_key
