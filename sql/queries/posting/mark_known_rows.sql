-- posting/mark_known_rows.sql
-- Before anything is inserted: every staged row whose source row this source already posted,
-- in whatever form, points at that entry (known_entry_id) and is not inserted again; the
-- classification then calls it ALREADY_POSTED (same entry) or CONFLICT (posted otherwise: a
-- setting such as LEDGER_ID, SOURCE_TIMEZONE or a map changed since). The row is found by its
-- source_row_key; an entry posted before keys existed (migration 008) by its old line-based
-- source_row_id, but only among %(unclaimed_legacy)s: entries whose (ledger_id, reference_id) no
-- row of the partition carries now (legacy_entries_unclaimed.sql), so a re-export that merely
-- moved rows to other lines never pairs a row with its neighbour's entry.
UPDATE post_stage s
   SET known_entry_id = coalesce(
           (SELECT e.id FROM ledger_entries e
             WHERE e.backfill_source_id = %(source_id)s
               AND e.source_row_key = s.source_row_key),
           (SELECT e.id FROM ledger_entries e
             WHERE e.id = ANY(%(unclaimed_legacy)s)
               AND e.source_row_id = s.source_row_id
               AND NOT EXISTS (SELECT 1 FROM ledger_entries x
                                WHERE x.ledger_id = s.ledger_id
                                  AND x.reference_id = s.reference_id)
             LIMIT 1))
