-- accounts/create_incoming.sql
-- The chart of accounts file as read, COPYed into a table of the transaction (dropped at commit)
-- before accounts/currency_clashes.sql and accounts/insert_new.sql compare and insert it.
CREATE TEMP TABLE incoming_accounts (
    id             TEXT,
    currency_code  TEXT,
    allow_negative BOOLEAN,
    account_type   TEXT
) ON COMMIT DROP
