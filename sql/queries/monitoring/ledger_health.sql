-- monitoring/ledger_health.sql
-- What the alert sensor (defs/operations/alerts.py) asks the ledger each tick:
--   outbox_failed            outbox rows a relay gave up on (status FAILED): the other ledger
--                            will not hear of those entries until someone acts;
--   outbox_failed_last_id    the newest of them, so a new failure is told apart from old ones;
--   entries_without_outbox   backfilled entries with no outbox row at all (a dual-ledger gap:
--                            posting writes both in one transaction, so someone removed it).
-- The FAILED rows are found through idx_dual_ledger_outbox_status; the gap is one anti-join of
-- the backfilled entries against the outbox's unique ledger_entry_id index.
SELECT (SELECT count(*) FROM dual_ledger_outbox WHERE status = 'FAILED') AS outbox_failed,
       (SELECT coalesce(max(id), 0) FROM dual_ledger_outbox WHERE status = 'FAILED')
           AS outbox_failed_last_id,
       (SELECT count(*) FROM ledger_entries e
         WHERE e.backfill_source_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id))
           AS entries_without_outbox
