-- ledger_control_totals.sql
-- Count and sum per currency of what this source posted in these partitions.
SELECT currency_code, count(*) AS entries, sum(amount) AS total
  FROM ledger_entries
 WHERE backfill_source_id = %(source_id)s AND backfill_partition = ANY(%(partition_keys)s)
 GROUP BY currency_code
 ORDER BY currency_code
