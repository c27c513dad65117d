-- posting/hold_new_rows.sql
-- A row without a reference is identified by its content, so a corrected row looks new. When an
-- entry this source posted in this partition has vanished from the source (%(vanished)s), every
-- new row without a reference beside it may be its correction: it is held as a CONFLICT against
-- the vanished entry nearest to it in the source, never posted as a silent swap. Rows that only
-- add to the source (nothing vanished) post as usual.
UPDATE post_stage s
   SET held_against = (SELECT v.id FROM ledger_entries v
                        WHERE v.id = ANY(%(vanished)s)
                        ORDER BY abs(v.source_row_id - s.source_row_id), v.id
                        LIMIT 1)
 WHERE s.known_entry_id IS NULL
   AND s.reference_generated
   AND NOT EXISTS (SELECT 1 FROM ledger_entries x
                    WHERE x.ledger_id = s.ledger_id AND x.reference_id = s.reference_id)
