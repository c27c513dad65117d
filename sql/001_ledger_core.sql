-- 001_ledger_core.sql
-- The ledger itself: accounts with their running balances, and the append-only entries.
-- Table and column names follow BACKFILL_STRATEGY.md so its SQL runbook runs unchanged.
--
-- Sign convention (the seed's reconciliation and rollback queries assume it):
--   a debit  increases the debit account's balance by `amount`;
--   a credit decreases the credit account's balance by `credit_amount`.
-- `credit_amount` equals `amount` unless the entry converts currency (fx_rate set); the seed has a
-- single `amount` column, which cannot express a cross-currency entry exactly, so we add the
-- credit side explicitly instead of re-deriving it (and re-rounding it) in every query.

CREATE TABLE IF NOT EXISTS bank_accounts (
    id                 TEXT PRIMARY KEY,
    currency_code      TEXT NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    balance            NUMERIC NOT NULL DEFAULT 0,
    available_balance  NUMERIC NOT NULL DEFAULT 0,
    reserved_balance   NUMERIC NOT NULL DEFAULT 0,
    -- Income, equity, liability and clearing accounts may go negative; customer accounts may not.
    allow_negative     BOOLEAN NOT NULL DEFAULT FALSE,
    account_type       TEXT NOT NULL DEFAULT 'customer',
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ledger_entries (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger_id             TEXT NOT NULL,
    debit_account_id      TEXT NOT NULL REFERENCES bank_accounts (id),
    credit_account_id     TEXT NOT NULL REFERENCES bank_accounts (id),
    amount                NUMERIC NOT NULL CHECK (amount > 0),
    currency_code         TEXT NOT NULL,
    credit_amount         NUMERIC NOT NULL CHECK (credit_amount > 0),
    credit_currency_code  TEXT NOT NULL,
    asset_type            TEXT NOT NULL,
    transaction_type      TEXT NOT NULL,
    reference_id          TEXT NOT NULL,
    timestamp_utc         TIMESTAMPTZ NOT NULL,
    fx_rate               NUMERIC CHECK (fx_rate IS NULL OR fx_rate > 0),
    metadata              JSONB,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Lineage: which source row, partition and run posted the entry, and what it said.
    backfill_source_id    TEXT,
    backfill_source_type  TEXT,
    backfill_partition    TEXT,
    backfill_run_id       TEXT,
    source_row_id         BIGINT,
    content_fingerprint   TEXT NOT NULL,
    CONSTRAINT ledger_entries_distinct_accounts CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_entries_ledger_reference_key UNIQUE (ledger_id, reference_id)
);

-- Balance reconciliation and rollback read entries by account; the INCLUDE keeps those scans
-- index-only.
CREATE INDEX IF NOT EXISTS idx_ledger_entries_debit
    ON ledger_entries (debit_account_id) INCLUDE (amount);
CREATE INDEX IF NOT EXISTS idx_ledger_entries_credit
    ON ledger_entries (credit_account_id) INCLUDE (credit_amount);
CREATE INDEX IF NOT EXISTS idx_ledger_entries_lineage
    ON ledger_entries (backfill_source_id, backfill_partition);
CREATE INDEX IF NOT EXISTS idx_ledger_entries_run
    ON ledger_entries (backfill_run_id);
