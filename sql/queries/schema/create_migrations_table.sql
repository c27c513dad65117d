-- schema/create_migrations_table.sql
-- The migration runner's bookkeeping: one row per applied sql/NNN_*.sql, with the checksum of
-- the file as applied. Created before the first migration runs.
CREATE TABLE IF NOT EXISTS ledger_schema_migrations (
    version     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
