-- posting/mark_known_rows_by_key.sql
-- posting/mark_known_rows.sql when the source has no entry from before source row keys (no
-- unclaimed legacy entry to pair): each staged row is looked up by its key (one probe of the
-- partial unique index), and only the rows found are written. The general statement rewrites
-- every staged row, which cost a fifth of a batch on a first backfill, where none is found.
UPDATE post_stage s
   SET known_entry_id = k.id
  FROM (SELECT p.source_row_id,
               -- a scalar subquery, never flattened into a join: one index probe per row
               (SELECT e.id FROM ledger_entries e
                 WHERE e.backfill_source_id = %(source_id)s
                   AND e.source_row_key = p.source_row_key) AS id
          FROM post_stage p) k
 WHERE s.source_row_id = k.source_row_id
   AND k.id IS NOT NULL
