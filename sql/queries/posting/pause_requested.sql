-- posting/pause_requested.sql
-- Has a pause been requested (`ledger-backfill pause`) for this source, or for every source
-- ('*'), since the run started? A row means yes; the poster then stops after its current batch.
-- Parameters (positional): source_id, run_started (timestamptz).
SELECT 1 FROM ledger_backfill_pause_requests
 WHERE source_id IN (%s, '*') AND requested_at >= %s
 LIMIT 1
