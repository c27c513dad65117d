-- 009_load_modes.sql
-- How each posting run loaded the ledger (LOAD_MODE, ledger/load_mode.py): `live` (every index
-- and check as migrated, other writers possible) or `initial` (PostgreSQL's "Populating a
-- Database": the secondary indexes of ledger_entries and dual_ledger_outbox dropped for the load
-- and built once after it, other writers kept out by an advisory lock).
--
-- The row of an initial load is also its control row: it keeps the definitions of the indexes it
-- dropped (pg_indexes.indexdef) until they are built again, so a load killed at any moment is
-- finished by the next posting run (or `ledger-backfill rebuild-indexes`), never left without
-- its indexes. At most one load is unfinished at a time.
CREATE TABLE IF NOT EXISTS ledger_backfill_loads (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id               TEXT NOT NULL,
    run_id                  TEXT NOT NULL,
    requested_mode          TEXT NOT NULL CHECK (requested_mode IN ('auto', 'live', 'initial')),
    mode                    TEXT NOT NULL CHECK (mode IN ('live', 'initial')),
    reason                  TEXT NOT NULL,
    status                  TEXT NOT NULL DEFAULT 'LOADING'
                            CHECK (status IN ('LOADING', 'REBUILDING', 'DONE')),
    dropped_indexes         JSONB NOT NULL DEFAULT '[]',  -- [{"name": ..., "definition": ...}]
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    posted_at               TIMESTAMPTZ,  -- the last batch of the load committed
    rebuilt_at              TIMESTAMPTZ,  -- every dropped index built again
    rebuild_seconds         NUMERIC,
    balances_validated_at   TIMESTAMPTZ,  -- every balance checked against its entries
    accounts_with_drift     INTEGER,
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_backfill_loads_one_unfinished
    ON ledger_backfill_loads ((true)) WHERE status <> 'DONE';
CREATE INDEX IF NOT EXISTS idx_backfill_loads_run ON ledger_backfill_loads (source_id, run_id);
