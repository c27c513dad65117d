-- lock_batch_accounts.sql
-- Lock every account the staged batch touches, in ascending id order: one global order means
-- concurrent batches over the same hot accounts wait for each other instead of deadlocking.
SELECT id, currency_code
  FROM bank_accounts
 WHERE id IN (SELECT debit_account_id FROM post_stage
              UNION
              SELECT credit_account_id FROM post_stage)
 ORDER BY id
   FOR UPDATE
