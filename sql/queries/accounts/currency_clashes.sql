-- accounts/currency_clashes.sql
-- Accounts of the incoming chart whose currency differs from the account's stored one (an
-- account's currency never changes): the first 20, as (id, stored, incoming).
SELECT i.id, b.currency_code, i.currency_code
  FROM incoming_accounts i
  JOIN bank_accounts b ON b.id = i.id
 WHERE b.currency_code <> i.currency_code
 ORDER BY i.id
 LIMIT 20
