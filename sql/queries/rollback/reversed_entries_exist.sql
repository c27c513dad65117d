-- rollback/reversed_entries_exist.sql
-- Has a rollback ever reversed one of the given entries? One index probe per entry through
-- (ledger_id, reference_id): the reversal of (L, R) is (L, 'REVERSAL-' || L || '-' || R). Only
-- then does a re-backfill need to re-apply them (rollback/post_reversals.sql).
-- Parameters (positional): entry_ids (bigint[]).
SELECT EXISTS (
    SELECT 1 FROM ledger_entries e
      JOIN ledger_entries x
        ON x.ledger_id = e.ledger_id
       AND x.reference_id = 'REVERSAL-' || e.ledger_id || '-' || e.reference_id
     WHERE e.id = ANY(%s))
