-- schema/record_migration.sql
-- Record a migration as applied, in the transaction that applied it: by the migration runner,
-- and by the balance-constraints job for 004, which may re-apply it (then name, checksum and
-- time are updated).
-- Parameters (positional): version, name (file name), checksum.
INSERT INTO ledger_schema_migrations (version, name, checksum)
VALUES (%s, %s, %s)
    ON CONFLICT (version) DO UPDATE
   SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()
