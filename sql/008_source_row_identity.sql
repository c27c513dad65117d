-- 008_source_row_identity.sql
-- A source row is identified by what it is, not by where it sits (ledger_backfill_dagster/
-- row_identity.py): its raw reference, or its raw content where it has none, plus its occurrence
-- among identical rows. Posting looks every staged row up by this key before inserting anything
-- (queries/mark_known_rows.sql), so a row this source already posted is never posted again in
-- another form after a setting changed (LEDGER_ID, SOURCE_TIMEZONE, the maps): it is ALREADY_POSTED
-- or a CONFLICT, held. Entries posted before this migration have no key (NULL); they are matched
-- by (ledger_id, reference_id) and, failing that, by their old line-based source_row_id.
ALTER TABLE ledger_entries ADD COLUMN IF NOT EXISTS source_row_key TEXT;

CREATE UNIQUE INDEX IF NOT EXISTS idx_ledger_entries_source_row_key
    ON ledger_entries (backfill_source_id, source_row_key)
    WHERE source_row_key IS NOT NULL;

-- Only entries from before this migration: empty on a ledger built by this release.
CREATE INDEX IF NOT EXISTS idx_ledger_entries_unkeyed_row
    ON ledger_entries (backfill_source_id, source_row_id)
    WHERE source_row_key IS NULL AND backfill_source_id IS NOT NULL;

-- A conflict whose existing entry is this very source row's (posted before in another form, or
-- the vanished row a new one is held beside): the row is counted once, as held, not also as
-- posted (queries/partition_accounting.sql).
ALTER TABLE ledger_backfill_conflicts
    ADD COLUMN IF NOT EXISTS same_source_row BOOLEAN NOT NULL DEFAULT false;
