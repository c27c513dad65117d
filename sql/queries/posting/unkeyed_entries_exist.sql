-- posting/unkeyed_entries_exist.sql
-- Does this source have entries posted before source row keys existed (migration 008)? Only then
-- can posting/legacy_entries_unclaimed.sql find anything; on any other ledger the partial index
-- answers at once and the partition's rows are never sent.
-- Parameters (positional): source_id.
SELECT EXISTS (SELECT 1 FROM ledger_entries
                WHERE backfill_source_id = %s AND source_row_key IS NULL) AS unkeyed
