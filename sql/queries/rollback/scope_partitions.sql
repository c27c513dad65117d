-- rollback/scope_partitions.sql
-- The partitions rollback/undo_partitions.sql found, in a stable order (the order their posting
-- locks are taken in): those of the scope itself, or (dependent) those outside it that hold a
-- row pointing at an entry being deleted.
-- Parameters (positional): dependent (boolean).
SELECT source_id, source_type, partition_key
  FROM undo_partitions
 WHERE dependent = %s
 ORDER BY source_id, source_type, partition_key
