-- posting/apply_batch_balances.sql
-- Move both balances of every entry this batch inserted (the staged rows post_batch.sql marked),
-- netted per account: one UPDATE per account, whatever the batch size. Runs after
-- lock_batch_accounts.sql, in the batch's transaction, so the entries and their balances commit
-- together or not at all.
WITH movements AS (
    SELECT debit_account_id AS account_id, amount AS delta
      FROM post_stage WHERE entry_id IS NOT NULL
    UNION ALL
    SELECT credit_account_id, -credit_amount
      FROM post_stage WHERE entry_id IS NOT NULL
),
net AS (
    SELECT account_id, sum(delta) AS delta FROM movements GROUP BY account_id
),
balances AS (
    UPDATE bank_accounts b
       SET balance = b.balance + net.delta,
           available_balance = b.available_balance + net.delta,
           updated_at = now()
      FROM net
     WHERE b.id = net.account_id
    RETURNING b.id
)
SELECT (SELECT count(*) FROM net)      AS accounts_expected,
       (SELECT count(*) FROM balances) AS accounts_moved
