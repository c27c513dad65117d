-- dual_ledger/outbox_coverage.sql
-- The seed's 6.3 "every entry has an outbox record", over the whole ledger rather than by a
-- reference prefix: posting writes exactly one outbox row per entry in the entry's own
-- transaction, so an entry without one, or an outbox row whose entry is gone, is a defect
-- (the SCB side would never hear of the entry, or would hear of one the ledger no longer has).
SELECT (SELECT count(*) FROM ledger_entries e
         WHERE NOT EXISTS (SELECT 1 FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id))
           AS entries_without_outbox,
       (SELECT count(*) FROM dual_ledger_outbox o
         WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.id = o.ledger_entry_id))
           AS outbox_without_entry,
       (SELECT coalesce(jsonb_agg(x), '[]'::jsonb) FROM (
            SELECT e.id, e.ledger_id, e.reference_id, e.backfill_source_type
              FROM ledger_entries e
             WHERE NOT EXISTS (SELECT 1 FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id)
             ORDER BY e.id LIMIT 20) x) AS sample_without_outbox
