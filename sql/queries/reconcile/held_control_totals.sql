-- reconcile/held_control_totals.sql
-- Count and sum per currency of the valid rows of these partitions that were not posted: each
-- duplicate by the entry it repeated, each conflict by its own incoming values (the other half
-- of the control totals, beside reconcile/ledger_control_totals.sql).
-- Parameters: source_id, partition_keys (text[]).
SELECT e.currency_code, count(*), sum(e.amount)
  FROM (SELECT source_row_id, existing_entry_id FROM ledger_backfill_duplicates
         WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s)
        UNION ALL
        SELECT source_row_id, NULL FROM ledger_backfill_conflicts
         WHERE source_id = %(source_id)s AND partition_key = ANY(%(partition_keys)s)) held
  JOIN LATERAL (SELECT (incoming_entry ->> 'currency_code') AS currency_code,
                       (incoming_entry ->> 'amount')::NUMERIC AS amount
                  FROM ledger_backfill_conflicts c
                 WHERE held.existing_entry_id IS NULL AND c.source_id = %(source_id)s
                   AND c.source_row_id = held.source_row_id
                UNION ALL
                SELECT x.currency_code, x.amount FROM ledger_entries x
                 WHERE x.id = held.existing_entry_id) e ON TRUE
 GROUP BY e.currency_code
