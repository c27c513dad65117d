-- rollback/chain_depths.sql
-- Over the reversal chains rollback/reversal_chains.sql followed: how many roots the scope holds,
-- and how many of them are already reversed (the last link of their chain is at odd depth).
SELECT count(*), count(*) FILTER (WHERE mod(depth, 2) = 1)
  FROM (SELECT DISTINCT ON (root_id) root_id, depth
          FROM chain_links
         ORDER BY root_id, depth DESC) last
