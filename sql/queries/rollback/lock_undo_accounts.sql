-- rollback/lock_undo_accounts.sql
-- Lock every account the undo touches, in ascending id order (the posting path's global order,
-- so a rollback and a concurrent batch wait for each other instead of deadlocking).
SELECT id
  FROM bank_accounts
 WHERE id IN (SELECT account_id FROM undo_deltas)
 ORDER BY id
   FOR UPDATE
