-- reconcile/balance_check_since.sql
-- The incremental balance check: for each account, a balance verified earlier plus the entries
-- above the id it was verified through must equal the stored balance now. One statement, one
-- snapshot, so balance and entries are read at the same moment. Each sum is an index range scan
-- of idx_ledger_entries_{debit,credit}_id over the new entries only.
WITH verified AS (
    SELECT *
      FROM unnest(%(account_ids)s::text[], %(balances)s::numeric[], %(through_ids)s::bigint[])
           AS v(account_id, verified_balance, through_id)
)
SELECT v.account_id,
       v.verified_balance
         + coalesce((SELECT sum(e.amount) FROM ledger_entries e
                      WHERE e.debit_account_id = v.account_id AND e.id > v.through_id), 0)
         - coalesce((SELECT sum(e.credit_amount) FROM ledger_entries e
                      WHERE e.credit_account_id = v.account_id AND e.id > v.through_id), 0)
           AS expected_balance,
       b.balance AS actual_balance,
       (SELECT coalesce(max(id), 0) FROM ledger_entries) AS through_id
  FROM verified v
  LEFT JOIN bank_accounts b ON b.id = v.account_id
 ORDER BY v.account_id
