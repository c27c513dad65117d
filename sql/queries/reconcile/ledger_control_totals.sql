-- reconcile/ledger_control_totals.sql
-- Count and sum per currency of what this source posted in these partitions. An entry whose own
-- source row is now held as a conflict (same_source_row: posted before in another form) counts
-- with the held rows, by the row's incoming values, not here as well (as in
-- partition_accounting.sql).
SELECT e.currency_code, count(*) AS entries, sum(e.amount) AS total
  FROM ledger_entries e
 WHERE e.backfill_source_id = %(source_id)s AND e.backfill_partition = ANY(%(partition_keys)s)
   AND NOT EXISTS (SELECT 1 FROM ledger_backfill_conflicts c
                    WHERE c.source_id = %(source_id)s AND c.same_source_row
                      AND c.existing_entry_id = e.id)
 GROUP BY e.currency_code
 ORDER BY e.currency_code
