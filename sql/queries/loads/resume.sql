-- loads/resume.sql
-- An initial load killed before it finished, taken over by the next run of the same source: its
-- indexes are still dropped, so the run continues the load. Parameters: id, run_id.
UPDATE ledger_backfill_loads
   SET run_id = %(run_id)s, status = 'LOADING', updated_at = now(),
       reason = reason || '; resumed by run ' || %(run_id)s
 WHERE id = %(id)s AND status = 'LOADING'
