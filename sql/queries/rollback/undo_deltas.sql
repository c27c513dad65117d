-- rollback/undo_deltas.sql
-- The exact net change per account of undoing undo_targets: minus each target's movement (a
-- debit moved its debit account by +amount, a credit moved its credit account by -credit_amount,
-- so FX entries are undone in both currencies exactly, with no re-conversion).
INSERT INTO undo_deltas (account_id, delta)
SELECT account_id, -sum(movement)
  FROM (SELECT e.debit_account_id AS account_id, e.amount AS movement
          FROM undo_targets t JOIN ledger_entries e ON e.id = t.entry_id
        UNION ALL
        SELECT e.credit_account_id, -e.credit_amount
          FROM undo_targets t JOIN ledger_entries e ON e.id = t.entry_id) m
 GROUP BY account_id
