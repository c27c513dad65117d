-- maintenance/neutralize_balance.sql
-- Move an account's stored balance (and available balance) back by d: a correction entry moves
-- the corrected account by exactly its difference, and the stored balance must not move.
-- Parameters: d (the difference, NUMERIC), a (the account id).
UPDATE bank_accounts
   SET balance = balance - %(d)s,
       available_balance = available_balance - %(d)s,
       updated_at = now()
 WHERE id = %(a)s
