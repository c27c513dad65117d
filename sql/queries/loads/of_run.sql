-- loads/of_run.sql
-- How a run loaded the ledger, for its reconciliation report. Parameters: source_id, run_id.
SELECT mode, requested_mode, reason, status, rebuilt_at, rebuild_seconds,
       balances_validated_at, accounts_with_drift
  FROM ledger_backfill_loads
 WHERE source_id = %(source_id)s AND run_id = %(run_id)s
 ORDER BY id
