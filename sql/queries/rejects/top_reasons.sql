-- rejects/top_reasons.sql
-- The most frequent reasons among each given partition's rejects (any stage), most frequent
-- first: what the reject guard (ledger/reject_guard.py) names when it holds a partition.
-- Parameters: source_id, partition_keys (text[]), per_partition (how many reasons each).
SELECT partition_key, reason, rows
  FROM (SELECT r.partition_key, reason, count(*) AS rows,
               row_number() OVER (PARTITION BY r.partition_key
                                  ORDER BY count(*) DESC, reason) AS rank
          FROM ledger_backfill_rejects r, unnest(r.reasons) AS reason
         WHERE r.source_id = %(source_id)s AND r.partition_key = ANY(%(partition_keys)s)
         GROUP BY r.partition_key, reason) ranked
 WHERE rank <= %(per_partition)s
 ORDER BY partition_key, rank
