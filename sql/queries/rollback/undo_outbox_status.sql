-- rollback/undo_outbox_status.sql
-- Outbox rows of the entries being undone, by status. SENT rows mean the SCB side already has
-- the entry: deleting it here would leave the two ledgers apart (a reversal instead sends the
-- reversal through the outbox too).
SELECT o.status, count(*) AS count
  FROM undo_targets t
  JOIN dual_ledger_outbox o ON o.ledger_entry_id = t.entry_id
 GROUP BY o.status
 ORDER BY o.status
