-- reconcile/balance_check_full.sql
-- Every given account's stored balance beside the sum of all its entries (the seed's 6.2 check,
-- fixed for our columns), and the highest entry id this statement's snapshot sees: the pair
-- (balance, through_id) is what later incremental checks (balance_check_since.sql) start from.
WITH movements AS (
    SELECT debit_account_id AS account_id, amount AS delta
      FROM ledger_entries WHERE debit_account_id = ANY(%(account_ids)s)
    UNION ALL
    SELECT credit_account_id, -credit_amount
      FROM ledger_entries WHERE credit_account_id = ANY(%(account_ids)s)
),
expected AS (
    SELECT account_id, sum(delta) AS expected_balance FROM movements GROUP BY account_id
)
SELECT a.account_id,
       coalesce(x.expected_balance, 0) AS expected_balance,
       b.balance AS actual_balance,
       (SELECT coalesce(max(id), 0) FROM ledger_entries) AS through_id
  FROM unnest(%(account_ids)s::text[]) AS a(account_id)
  LEFT JOIN bank_accounts b ON b.id = a.account_id
  LEFT JOIN expected x ON x.account_id = a.account_id
 ORDER BY a.account_id
