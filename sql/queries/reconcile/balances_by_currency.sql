-- reconcile/balances_by_currency.sql
-- Per currency: the sum of all stored balances against debits minus credits of all entries.
WITH sides AS (
    SELECT currency_code AS currency, amount AS delta FROM ledger_entries
    UNION ALL
    SELECT credit_currency_code, -credit_amount FROM ledger_entries
),
entries AS (SELECT currency, sum(delta) AS net FROM sides GROUP BY currency),
stored AS (SELECT currency_code AS currency, sum(balance) AS total FROM bank_accounts GROUP BY 1)
SELECT coalesce(s.currency, e.currency) AS currency,
       coalesce(s.total, 0) AS stored_balances,
       coalesce(e.net, 0) AS entries_net,
       coalesce(s.total, 0) = coalesce(e.net, 0) AS consistent
  FROM stored s FULL JOIN entries e ON e.currency = s.currency
 ORDER BY 1
