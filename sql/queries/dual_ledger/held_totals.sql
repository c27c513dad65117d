-- dual_ledger/held_totals.sql
-- What our ledger holds, per partition and currency, of a source's days: the entries this source
-- posted (by lineage), plus the entries its rows repeated as exact duplicates (already in the
-- ledger from another source or day). Compared with the SCB side's control totals.
WITH held AS (
    SELECT e.backfill_partition AS partition_key, e.currency_code, e.amount
      FROM ledger_entries e
     WHERE e.backfill_source_id = %(source_id)s
       AND e.backfill_partition = ANY(%(partition_keys)s)
    UNION ALL
    SELECT d.partition_key, e.currency_code, e.amount
      FROM ledger_backfill_duplicates d
      JOIN ledger_entries e ON e.id = d.existing_entry_id
     WHERE d.source_id = %(source_id)s
       AND d.partition_key = ANY(%(partition_keys)s)
)
SELECT partition_key, currency_code, count(*) AS entries, sum(amount) AS total
  FROM held
 GROUP BY 1, 2
 ORDER BY 1, 2
