-- rollback/undo_dependents.sql
-- Partitions outside the scope holding a duplicate or conflict row that points at an entry being
-- deleted: without that entry, their row would have been posted (or compared with something
-- else), so their checkpoints are reset too and only those rows removed; a re-run of the
-- partition classifies them again.
INSERT INTO undo_partitions (source_id, source_type, partition_key, dependent)
SELECT DISTINCT c.source_id, c.source_type, c.partition_key, TRUE
  FROM (SELECT source_id, partition_key FROM ledger_backfill_duplicates
         WHERE existing_entry_id IN (SELECT entry_id FROM undo_targets)
        UNION
        SELECT source_id, partition_key FROM ledger_backfill_conflicts
         WHERE existing_entry_id IN (SELECT entry_id FROM undo_targets)) held
  JOIN ledger_backfill_checkpoints c
    ON c.source_id = held.source_id AND c.partition_key = held.partition_key
ON CONFLICT DO NOTHING
