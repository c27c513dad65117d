-- maintenance/constraint_probe_account.sql
-- The seed's deliberate bad update (5.3) when no account may go negative yet: a throw-away
-- account created with available_balance -1, which the balance constraints must refuse (inside a
-- savepoint, so nothing remains either way).
-- Parameters (positional): account id.
INSERT INTO bank_accounts (id, currency_code, available_balance)
VALUES (%s, 'XTS', -1)
