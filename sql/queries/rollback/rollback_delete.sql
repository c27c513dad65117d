-- rollback/rollback_delete.sql
-- The seed's scenario-1 rollback, fixed: delete the undo targets (selected by lineage, not by a
-- reference prefix) and their outbox rows, and restore each touched balance by the exact delta
-- planned in undo_deltas (debits by amount, credits by credit_amount), in one statement.
WITH outbox AS (
    DELETE FROM dual_ledger_outbox o
     USING undo_targets t
     WHERE o.ledger_entry_id = t.entry_id
    RETURNING 1
),
entries AS (
    DELETE FROM ledger_entries e
     USING undo_targets t
     WHERE e.id = t.entry_id
    RETURNING 1
),
balances AS (
    UPDATE bank_accounts b
       SET balance = b.balance + d.delta,
           available_balance = b.available_balance + d.delta,
           updated_at = now()
      FROM undo_deltas d
     WHERE b.id = d.account_id AND d.delta <> 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM entries)  AS entries_deleted,
       (SELECT count(*) FROM outbox)   AS outbox_deleted,
       (SELECT count(*) FROM balances) AS accounts_restored
