-- accounts/stored_balances.sql
-- The stored balance of each given account, as (id, balance): what a rollback or a correction
-- compares with the balances it planned.
-- Parameters (positional): account_ids (text[]).
SELECT id, balance FROM bank_accounts WHERE id = ANY(%s)
