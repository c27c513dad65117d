-- loads/set_status.sql
-- Move an initial load on: REBUILDING once posting is over, DONE once its indexes are back.
-- Parameters: id, status, rebuild_seconds (or NULL).
UPDATE ledger_backfill_loads
   SET status = %(status)s,
       posted_at = CASE WHEN %(status)s = 'REBUILDING' THEN now() ELSE posted_at END,
       rebuilt_at = CASE WHEN %(status)s = 'DONE' THEN now() ELSE rebuilt_at END,
       rebuild_seconds = coalesce(%(rebuild_seconds)s, rebuild_seconds),
       updated_at = now()
 WHERE id = %(id)s
