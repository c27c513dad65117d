-- schema/currency_minor_units.sql
-- Refresh one currency's ISO 4217 minor units; a row already right is not rewritten.
-- Parameters (positional): currency_code, minor_units.
INSERT INTO currency_minor_units (currency_code, minor_units)
VALUES (%s, %s)
    ON CONFLICT (currency_code) DO UPDATE
   SET minor_units = EXCLUDED.minor_units
 WHERE currency_minor_units.minor_units IS DISTINCT FROM EXCLUDED.minor_units
