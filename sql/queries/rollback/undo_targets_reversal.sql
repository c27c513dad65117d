-- rollback/undo_targets_reversal.sql
-- What an append-only rollback reverses: for every root whose effect is in force (its chain has
-- even depth), the last link of its chain. A root already reversed is left alone, and so is a
-- root that is itself a link of another root's chain in the same scope (it is handled there).
-- With %(want_reversed)s the opposite: the last link of every root currently reversed, whose
-- reversal re-applies the root (a re-backfill of a rolled-back partition).
INSERT INTO undo_targets (entry_id)
SELECT last.entry_id
  FROM (SELECT DISTINCT ON (root_id) root_id, entry_id, depth
          FROM chain_links
         ORDER BY root_id, depth DESC) last
 WHERE (mod(last.depth, 2) = 1) = %(want_reversed)s
   AND NOT EXISTS (SELECT 1 FROM chain_links l WHERE l.depth > 0 AND l.entry_id = last.root_id)
