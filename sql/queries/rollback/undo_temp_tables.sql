-- rollback/undo_temp_tables.sql
-- Working sets of a rollback (and of reinstating reversed entries on a re-backfill), private to
-- the transaction and dropped at its end:
--   chain_roots      the entries a rollback's scope selects by lineage;
--   chain_links      each root with its reversal chain (REVERSAL-<ledger>-<ref>, then the reversal
--                    of that, ...) and the depth of each link: odd depth = the root's effect is
--                    currently reversed, even = in effect;
--   undo_targets     the entries whose movements are undone (deleted, or reversed);
--   undo_deltas      the exact net change per account that undoing them makes;
--   undo_partitions  the (source, type, partition) whose checkpoints and held rows are reset.
CREATE TEMP TABLE IF NOT EXISTS chain_roots (entry_id BIGINT PRIMARY KEY) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS chain_links (
    root_id BIGINT NOT NULL, entry_id BIGINT NOT NULL, depth INTEGER NOT NULL
) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS undo_targets (entry_id BIGINT PRIMARY KEY) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS undo_deltas (
    account_id TEXT PRIMARY KEY, delta NUMERIC NOT NULL
) ON COMMIT DROP;
CREATE TEMP TABLE IF NOT EXISTS undo_partitions (
    source_id TEXT NOT NULL, source_type TEXT NOT NULL, partition_key TEXT NOT NULL,
    dependent BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (source_id, source_type, partition_key)
) ON COMMIT DROP;
TRUNCATE chain_roots, chain_links, undo_targets, undo_deltas, undo_partitions
