-- reconcile/duplicate_references.sql
-- The seed's 1.1 duplicate check: must be empty (the unique constraint guarantees it; this
-- proves the constraint is there and holding).
SELECT ledger_id, reference_id, count(*)
  FROM ledger_entries
 GROUP BY ledger_id, reference_id
HAVING count(*) > 1
 LIMIT 100
