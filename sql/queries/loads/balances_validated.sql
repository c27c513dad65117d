-- loads/balances_validated.sql
-- Record the check of every balance against its entries that follows an initial load's index
-- build. Parameters: id, accounts_with_drift.
UPDATE ledger_backfill_loads
   SET balances_validated_at = now(), accounts_with_drift = %(accounts_with_drift)s,
       updated_at = now()
 WHERE id = %(id)s
