-- rollback/undo_plan.sql
-- Per account: balance now, the exact delta of the undo, the balance after, and whether the
-- result would break 004's balance constraints (allow_negative accounts exempt).
SELECT d.account_id,
       b.currency_code,
       b.allow_negative,
       b.balance AS balance_before,
       d.delta,
       b.balance + d.delta AS balance_after,
       b.available_balance + d.delta AS available_after,
       (b.reserved_balance < 0
        OR (NOT b.allow_negative
            AND (b.available_balance + d.delta < 0
                 OR b.available_balance + d.delta > b.balance + d.delta
                 OR b.available_balance + d.delta + b.reserved_balance > b.balance + d.delta)))
           AS breaks_constraints
  FROM undo_deltas d
  JOIN bank_accounts b ON b.id = d.account_id
 ORDER BY d.account_id
