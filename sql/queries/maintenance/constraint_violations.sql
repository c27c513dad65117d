-- maintenance/constraint_violations.sql
-- The seed's 5.1 pre-constraint validation, fixed: the seed counts every account whose available
-- balance is negative or above its balance, but 004_balance_constraints.sql exempts accounts
-- flagged allow_negative (income, equity, liability, clearing, suspense run negative by design),
-- so this asks exactly what the constraints will ask, and names the accounts instead of counting
-- them. reserved_balance may never be negative, on any account.
SELECT id AS account_id,
       currency_code,
       balance,
       available_balance,
       reserved_balance,
       allow_negative,
       array_remove(ARRAY[
           CASE WHEN reserved_balance < 0 THEN 'reserved_balance < 0' END,
           CASE WHEN NOT allow_negative AND available_balance < 0
                THEN 'available_balance < 0' END,
           CASE WHEN NOT allow_negative AND available_balance > balance
                THEN 'available_balance > balance' END,
           CASE WHEN NOT allow_negative AND available_balance + reserved_balance > balance
                THEN 'available_balance + reserved_balance > balance' END
       ], NULL) AS broken_rules,
       count(*) OVER () AS total_violations
  FROM bank_accounts
 WHERE reserved_balance < 0
    OR (NOT allow_negative
        AND (available_balance < 0
             OR available_balance > balance
             OR available_balance + reserved_balance > balance))
 ORDER BY id
 LIMIT %(limit)s
