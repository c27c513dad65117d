-- rollback/scope_corrections.sql
-- How many CORRECTION entries the scope selected: a correction is undone by a counter-correction,
-- never by a rollback, so any at all refuses the rollback.
SELECT count(*)
  FROM chain_roots r
  JOIN ledger_entries e ON e.id = r.entry_id
 WHERE e.backfill_source_type = 'CORRECTION'
