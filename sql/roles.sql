-- roles.sql
-- Least-privilege database roles for the ledger (applied by `ledger-backfill roles`, which fills
-- in the role names as quoted identifiers; rerun it after every schema upgrade: it is
-- idempotent). Three group roles, no LOGIN: give people and services their own login roles that
-- are members of one group (docs/operations.md, "Credentials").
--
--   reader    monitoring: `ledger-backfill status`, the stalled-backfill sensor, dashboards.
--             SELECT on every table.
--   backfill  the backfill runs: INSERT ledger entries and outbox rows, INSERT accounts and
--             UPDATE balances, write its own control tables (checkpoints, rejects, duplicates,
--             conflicts, pause requests, audit log). It can NOT delete or update ledger entries
--             or outbox rows, nor truncate anything.
--   rollback  the rollback job (a separate credential, used rarely): what backfill may, plus
--             DELETE of ledger entries and outbox rows.
-- Schema changes (migrations, 004 balance constraints) stay with the owner of the tables.
-- Objects are addressed in the schema `public`, where the migrations create them.

-- Group roles (created once per server; a concurrent creator is not an error).
DO $roles$
DECLARE r TEXT;
BEGIN
    FOREACH r IN ARRAY ARRAY[{reader_name}, {backfill_name}, {rollback_name}] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;

-- Reach the database and schema; TEMPORARY for the per-batch staging tables.
GRANT CONNECT ON DATABASE {database} TO {reader}, {backfill}, {rollback};
GRANT TEMPORARY ON DATABASE {database} TO {backfill}, {rollback};
GRANT USAGE ON SCHEMA public TO {reader}, {backfill}, {rollback};

-- Everyone reads everything (the reconciliation and status queries read across tables).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}, {backfill}, {rollback};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {backfill}, {rollback};
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {backfill}, {rollback};

-- The ledger: append entries and outbox rows, create accounts, move balances.
GRANT INSERT ON ledger_entries, dual_ledger_outbox TO {backfill}, {rollback};
GRANT INSERT, UPDATE ON bank_accounts TO {backfill}, {rollback};
GRANT INSERT, UPDATE ON currency_minor_units TO {backfill}, {rollback};

-- The backfill's own control tables, whatever migrations added (ledger_backfill_*), except the
-- audit log, which is append-only for everyone.
DO $control$
DECLARE t TEXT;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables
              WHERE schemaname = 'public' AND tablename LIKE 'ledger\_backfill\_%'
                AND tablename <> 'ledger_backfill_audit_log' LOOP
        EXECUTE format('GRANT INSERT, UPDATE, DELETE ON public.%I TO %I, %I',
                       t, {backfill_name}, {rollback_name});
    END LOOP;
END
$control$;
GRANT INSERT ON ledger_backfill_audit_log TO {backfill}, {rollback};

-- Only the rollback role removes ledger entries and their outbox rows.
GRANT DELETE ON ledger_entries, dual_ledger_outbox TO {rollback};

-- Nothing else: make sure earlier grants (by hand, or an older version of this file) are gone.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, dual_ledger_outbox FROM {backfill};
REVOKE UPDATE, TRUNCATE ON ledger_entries, dual_ledger_outbox FROM {rollback};
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM {reader};
REVOKE TRUNCATE ON ALL TABLES IN SCHEMA public FROM {backfill}, {rollback};
REVOKE CREATE ON SCHEMA public FROM {reader}, {backfill}, {rollback};
