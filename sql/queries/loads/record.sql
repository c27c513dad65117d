-- loads/record.sql
-- Record a posting run's load mode; an initial load's row keeps the indexes it drops.
-- Parameters: source_id, run_id, requested_mode, mode, reason, status, dropped_indexes (JSONB).
INSERT INTO ledger_backfill_loads (
    source_id, run_id, requested_mode, mode, reason, status, dropped_indexes)
VALUES (%(source_id)s, %(run_id)s, %(requested_mode)s, %(mode)s, %(reason)s, %(status)s,
        %(dropped_indexes)s)
RETURNING id
