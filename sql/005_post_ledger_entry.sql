-- 005_post_ledger_entry.sql
-- The seed's atomic single-entry posting function, plus the helpers it and the set-based batch
-- path share, so both compute the same fingerprint and the same rounding.

-- ISO 4217 minor units; rows are loaded by the migration runner from the `iso4217` package.
CREATE TABLE IF NOT EXISTS currency_minor_units (
    currency_code  TEXT PRIMARY KEY,
    minor_units    INTEGER CHECK (minor_units >= 0)  -- NULL: ISO 4217 says "N.A." (XAU, XDR…)
);

-- Round a non-negative amount to `places` decimals, ties to even (banker's rounding).
-- PostgreSQL's round(numeric) rounds ties away from zero, which is not what FX conversion asks.
CREATE OR REPLACE FUNCTION round_half_even(v NUMERIC, places INTEGER)
RETURNS NUMERIC LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT round(
        CASE
            WHEN x - floor(x) > 0.5 THEN floor(x) + 1
            WHEN x - floor(x) < 0.5 THEN floor(x)
            WHEN mod(floor(x), 2) = 0 THEN floor(x)
            ELSE floor(x) + 1
        END / power(10::NUMERIC, places), places)
    FROM (SELECT v * power(10::NUMERIC, places) AS x) scaled
$$;

-- A fingerprint of everything an entry says. Two rows with the same (ledger_id, reference_id)
-- are duplicates when their fingerprints are equal and conflicts otherwise. Amounts are compared
-- by value (10.50 = 10.5), metadata as canonical JSONB, timestamps to the microsecond.
CREATE OR REPLACE FUNCTION ledger_entry_fingerprint(
    p_ledger_id TEXT, p_debit_account_id TEXT, p_credit_account_id TEXT,
    p_amount NUMERIC, p_currency_code TEXT, p_credit_amount NUMERIC, p_credit_currency_code TEXT,
    p_asset_type TEXT, p_transaction_type TEXT, p_reference_id TEXT,
    p_timestamp_utc TIMESTAMPTZ, p_fx_rate NUMERIC, p_metadata JSONB)
RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT md5(jsonb_build_array(
        p_ledger_id, p_debit_account_id, p_credit_account_id,
        trim_scale(p_amount)::TEXT, p_currency_code,
        trim_scale(p_credit_amount)::TEXT, p_credit_currency_code,
        p_asset_type, p_transaction_type, p_reference_id,
        (extract(epoch FROM p_timestamp_utc) * 1000000)::BIGINT,
        trim_scale(p_fx_rate)::TEXT, p_metadata)::TEXT)
$$;

-- post_ledger_entry: post one entry atomically (the seed's signature, extended with optional
-- timestamp and lineage). Locks both accounts in id order, checks accounts and currencies,
-- inserts the entry, moves both balances and writes the outbox row. A repeated
-- (ledger_id, reference_id) raises unique_violation (23505), as the seed's callers expect.
CREATE OR REPLACE FUNCTION post_ledger_entry(
    p_ledger_id TEXT,
    p_debit_account_id TEXT,
    p_credit_account_id TEXT,
    p_amount NUMERIC,
    p_currency_code TEXT,
    p_asset_type TEXT,
    p_transaction_type TEXT,
    p_reference_id TEXT,
    p_fx_rate NUMERIC DEFAULT NULL,
    p_metadata JSONB DEFAULT NULL,
    p_timestamp_utc TIMESTAMPTZ DEFAULT now(),
    p_backfill_source_id TEXT DEFAULT NULL,
    p_backfill_source_type TEXT DEFAULT NULL,
    p_backfill_partition TEXT DEFAULT NULL,
    p_backfill_run_id TEXT DEFAULT NULL,
    p_source_row_id BIGINT DEFAULT NULL)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    v_debit_currency  TEXT;
    v_credit_currency TEXT;
    v_credit_amount   NUMERIC;
    v_minor_units     INTEGER;
    v_entry_id        BIGINT;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 THEN
        RAISE EXCEPTION 'amount must be greater than zero (reference %)', p_reference_id
            USING ERRCODE = 'check_violation';
    END IF;
    IF p_debit_account_id = p_credit_account_id THEN
        RAISE EXCEPTION 'debit and credit account are both % (reference %)',
            p_debit_account_id, p_reference_id USING ERRCODE = 'check_violation';
    END IF;

    -- One global lock order (ascending id) so concurrent posters never deadlock.
    PERFORM 1 FROM bank_accounts
     WHERE id IN (p_debit_account_id, p_credit_account_id)
     ORDER BY id FOR UPDATE;

    SELECT currency_code INTO v_debit_currency FROM bank_accounts WHERE id = p_debit_account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'debit account % does not exist (reference %)',
            p_debit_account_id, p_reference_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT currency_code INTO v_credit_currency FROM bank_accounts WHERE id = p_credit_account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit account % does not exist (reference %)',
            p_credit_account_id, p_reference_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF p_currency_code <> v_debit_currency THEN
        RAISE EXCEPTION 'currency % differs from debit account % currency % (reference %)',
            p_currency_code, p_debit_account_id, v_debit_currency, p_reference_id
            USING ERRCODE = 'check_violation';
    END IF;

    IF v_credit_currency = v_debit_currency THEN
        v_credit_amount := p_amount;
    ELSE
        IF p_fx_rate IS NULL OR p_fx_rate <= 0 THEN
            RAISE EXCEPTION 'fx_rate required: credit account % is in % (reference %)',
                p_credit_account_id, v_credit_currency, p_reference_id
                USING ERRCODE = 'check_violation';
        END IF;
        SELECT minor_units INTO v_minor_units
          FROM currency_minor_units WHERE currency_code = v_credit_currency;
        v_credit_amount := round_half_even(p_amount * p_fx_rate, coalesce(v_minor_units, 18));
    END IF;

    INSERT INTO ledger_entries (
        ledger_id, debit_account_id, credit_account_id, amount, currency_code,
        credit_amount, credit_currency_code, asset_type, transaction_type, reference_id,
        timestamp_utc, fx_rate, metadata, backfill_source_id, backfill_source_type,
        backfill_partition, backfill_run_id, source_row_id, content_fingerprint)
    VALUES (
        p_ledger_id, p_debit_account_id, p_credit_account_id, p_amount, p_currency_code,
        v_credit_amount, v_credit_currency, p_asset_type, p_transaction_type, p_reference_id,
        p_timestamp_utc, p_fx_rate, p_metadata, p_backfill_source_id, p_backfill_source_type,
        p_backfill_partition, p_backfill_run_id, p_source_row_id,
        ledger_entry_fingerprint(p_ledger_id, p_debit_account_id, p_credit_account_id,
            p_amount, p_currency_code, v_credit_amount, v_credit_currency, p_asset_type,
            p_transaction_type, p_reference_id, p_timestamp_utc, p_fx_rate, p_metadata))
    RETURNING id INTO v_entry_id;

    UPDATE bank_accounts
       SET balance = balance + p_amount,
           available_balance = available_balance + p_amount,
           updated_at = now()
     WHERE id = p_debit_account_id;
    UPDATE bank_accounts
       SET balance = balance - v_credit_amount,
           available_balance = available_balance - v_credit_amount,
           updated_at = now()
     WHERE id = p_credit_account_id;

    INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)
    VALUES (v_entry_id, p_ledger_id, p_reference_id);

    RETURN v_entry_id;
END;
$$;
