-- touched_balance_drift.sql
-- The seed's 6.2 balance reconciliation, fixed for our tables (the seed's query reads
-- `account_id` and `side` columns that ledger_entries does not have), limited to given accounts:
-- every account whose stored balance differs from the sum of its entries. Exact: no tolerance.
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
SELECT b.id AS account_id,
       coalesce(x.expected_balance, 0) AS expected_balance,
       b.balance AS actual_balance,
       coalesce(x.expected_balance, 0) - b.balance AS difference
  FROM bank_accounts b
  LEFT JOIN expected x ON x.account_id = b.id
 WHERE b.id = ANY(%(account_ids)s)
   AND coalesce(x.expected_balance, 0) <> b.balance
 ORDER BY b.id
