-- maintenance/balance_constraint_names.sql
-- The seed's 5.3 post-constraint check: which balance constraints bank_accounts carries, and
-- whether PostgreSQL has validated them against every existing row.
SELECT c.conname AS constraint_name,
       c.convalidated AS validated,
       pg_get_constraintdef(c.oid) AS definition
  FROM pg_constraint c
 WHERE c.conrelid = 'bank_accounts'::regclass
   AND c.contype = 'c'
   AND strpos(c.conname, 'balance') > 0
 ORDER BY c.conname
