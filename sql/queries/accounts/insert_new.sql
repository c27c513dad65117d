-- accounts/insert_new.sql
-- Insert the incoming accounts not yet in bank_accounts, in id order; existing accounts are left
-- untouched (their currency was checked by accounts/currency_clashes.sql). The row count is the
-- number inserted.
INSERT INTO bank_accounts (id, currency_code, allow_negative, account_type)
SELECT id, currency_code, allow_negative, account_type
  FROM incoming_accounts
 ORDER BY id
    ON CONFLICT (id) DO NOTHING
