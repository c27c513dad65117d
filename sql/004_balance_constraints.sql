-- 004_balance_constraints.sql
-- Balance constraints (step 5 of BACKFILL_STRATEGY.md). NOT part of the default migration run:
-- history may pass through states these forbid, so they are applied by the
-- `apply_balance_constraints` job after a backfill has been validated.
--
-- The seed's constraints apply to every account; a ledger's income, equity, liability and
-- clearing accounts legitimately run negative, so each rule exempts accounts flagged
-- allow_negative. reserved_balance can never be negative.

ALTER TABLE bank_accounts DROP CONSTRAINT IF EXISTS bank_accounts_reserved_balance_check;
ALTER TABLE bank_accounts DROP CONSTRAINT IF EXISTS bank_accounts_available_balance_check;
ALTER TABLE bank_accounts DROP CONSTRAINT IF EXISTS bank_accounts_balance_within_check;

ALTER TABLE bank_accounts
    ADD CONSTRAINT bank_accounts_reserved_balance_check CHECK (reserved_balance >= 0);
ALTER TABLE bank_accounts
    ADD CONSTRAINT bank_accounts_available_balance_check
    CHECK (allow_negative OR available_balance >= 0);
ALTER TABLE bank_accounts
    ADD CONSTRAINT bank_accounts_balance_within_check
    CHECK (allow_negative OR (available_balance <= balance
                              AND available_balance + reserved_balance <= balance));
