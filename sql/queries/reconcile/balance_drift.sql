-- reconcile/balance_drift.sql
-- The seed's 6.2 balance reconciliation over every account, fixed: the seed reads `account_id`
-- and `side` columns that ledger_entries does not have, and tolerates 0.01 of difference; here a
-- debit adds `amount` to the debit account, a credit subtracts `credit_amount` from the credit
-- account, and any difference at all is reported.
WITH movements AS (
    SELECT debit_account_id AS account_id, amount AS delta FROM ledger_entries
    UNION ALL
    SELECT credit_account_id, -credit_amount FROM ledger_entries
),
expected AS (
    SELECT account_id, sum(delta) AS expected_balance FROM movements GROUP BY account_id
)
SELECT b.id AS account_id,
       b.currency_code,
       coalesce(x.expected_balance, 0) AS expected_balance,
       b.balance AS actual_balance,
       coalesce(x.expected_balance, 0) - b.balance AS difference
  FROM bank_accounts b
  LEFT JOIN expected x ON x.account_id = b.id
 WHERE coalesce(x.expected_balance, 0) <> b.balance
    OR b.available_balance + b.reserved_balance <> b.balance
 ORDER BY b.id
