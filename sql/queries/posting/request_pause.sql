-- posting/request_pause.sql
-- Ask running backfills of a source ('*': of every source) to stop after their current batch
-- (`ledger-backfill pause`); posting/pause_requested.sql is what the posters ask. A repeated
-- request renews the time it was made.
-- Parameters (positional): source_id (or '*'), requested_by.
INSERT INTO ledger_backfill_pause_requests (source_id, requested_by)
VALUES (%s, %s)
    ON CONFLICT (source_id) DO UPDATE
   SET requested_at = now(), requested_by = EXCLUDED.requested_by
