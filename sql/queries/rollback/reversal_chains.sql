-- rollback/reversal_chains.sql
-- Follow each root's reversal chain through the (ledger_id, reference_id) index: the reversal of
-- (L, R) is (L, 'REVERSAL-' || L || '-' || R), the reversal of that reversal re-applies R, and
-- so on. Depth 0 is the root itself.
INSERT INTO chain_links (root_id, entry_id, depth)
WITH RECURSIVE chain AS (
    SELECT e.id AS root_id, e.id AS entry_id, e.ledger_id, e.reference_id, 0 AS depth
      FROM chain_roots r
      JOIN ledger_entries e ON e.id = r.entry_id
    UNION ALL
    SELECT c.root_id, x.id, x.ledger_id, x.reference_id, c.depth + 1
      FROM chain c
      JOIN ledger_entries x
        ON x.ledger_id = c.ledger_id
       AND x.reference_id = 'REVERSAL-' || c.ledger_id || '-' || c.reference_id
)
SELECT root_id, entry_id, depth FROM chain
