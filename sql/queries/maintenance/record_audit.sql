-- maintenance/record_audit.sql
-- One audit row for a constraint application, correction or rollback (or a refusal or dry run
-- of one), written in the transaction of the change it describes. Returns its id.
-- Parameters (positional): action, scope (jsonb), details (jsonb), reason, run_id, dry_run.
INSERT INTO ledger_backfill_audit_log (action, scope, details, reason, run_id, dry_run)
VALUES (%s, %s, %s, %s, %s, %s)
RETURNING id
