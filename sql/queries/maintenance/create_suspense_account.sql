-- maintenance/create_suspense_account.sql
-- Create a currency's suspense account for corrections: it may go negative, and is left alone if
-- a concurrent correction created it first.
-- Parameters (positional): account id, currency_code.
INSERT INTO bank_accounts (id, currency_code, allow_negative, account_type)
VALUES (%s, %s, TRUE, 'suspense')
    ON CONFLICT (id) DO NOTHING
