-- dual_ledger/outbox_status.sql
-- The seed's 6.3 dual-ledger reconciliation, scoped by lineage: outbox rows by status for this
-- source's entries, and how many of its entries have no outbox row at all.
SELECT coalesce(o.status, 'MISSING') AS status,
       count(*) AS count,
       min(o.created_at) AS oldest,
       max(o.created_at) AS newest
  FROM ledger_entries e
  LEFT JOIN dual_ledger_outbox o ON o.ledger_entry_id = e.id
 WHERE e.backfill_source_id = %(source_id)s AND e.backfill_partition = ANY(%(partition_keys)s)
 GROUP BY 1
 ORDER BY 1
