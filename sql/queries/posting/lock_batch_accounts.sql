-- posting/lock_batch_accounts.sql
-- Lock every account the staged batch touches, in ascending id order: one global order means
-- concurrent batches over the same hot accounts wait for each other instead of deadlocking.
-- Taken after the batch's entries are inserted and before its balances move, so two partitions
-- posting over the same accounts insert in parallel and queue only for the balance update and
-- the commit. All staged rows count, posted or not: an unknown account fails the whole batch.
SELECT id, currency_code
  FROM bank_accounts
 WHERE id IN (SELECT debit_account_id FROM post_stage
              UNION
              SELECT credit_account_id FROM post_stage)
 ORDER BY id
   FOR UPDATE
