-- reconcile/currency_totals.sql
-- Debits and credits per ledger and currency. For single-currency entries debits equal credits
-- to the cent; a currency's difference can only come from FX entries, whose two sides are in two
-- currencies, and is reported as their net (fx_net) so the identity debits - credits = fx_net
-- must hold exactly. Also ties the stored balances to the entries: per currency,
-- sum(balance) = debits - credits over all ledgers.
WITH sides AS (
    SELECT ledger_id, currency_code AS currency, amount AS debit, 0::NUMERIC AS credit,
           CASE WHEN currency_code <> credit_currency_code THEN amount ELSE 0 END AS fx_net
      FROM ledger_entries
    UNION ALL
    SELECT ledger_id, credit_currency_code, 0, credit_amount,
           CASE WHEN currency_code <> credit_currency_code THEN -credit_amount ELSE 0 END
      FROM ledger_entries
)
SELECT ledger_id, currency,
       sum(debit) AS debits, sum(credit) AS credits, sum(fx_net) AS fx_net,
       sum(debit) - sum(credit) = sum(fx_net) AS balanced
  FROM sides
 GROUP BY ledger_id, currency
 ORDER BY ledger_id, currency
