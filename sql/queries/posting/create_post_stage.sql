-- posting/create_post_stage.sql
-- Per-connection staging table for one batch (of one partition, or of a group of small ones). Rows are COPYed in, posted set-based, and vanish at
-- commit (or with the rollback of a failed batch). The last two columns are filled by
-- mark_known_rows.sql and hold_new_rows.sql before anything is inserted.
CREATE TEMP TABLE IF NOT EXISTS post_stage (
    partition_key         TEXT NOT NULL,   -- a group of small partitions shares one batch
    source_row_id         BIGINT NOT NULL,
    line_number           BIGINT,
    ledger_id             TEXT NOT NULL,
    debit_account_id      TEXT NOT NULL,
    credit_account_id     TEXT NOT NULL,
    amount                NUMERIC NOT NULL,
    currency_code         TEXT NOT NULL,
    credit_amount         NUMERIC NOT NULL,
    credit_currency_code  TEXT NOT NULL,
    asset_type            TEXT NOT NULL,
    transaction_type      TEXT NOT NULL,
    reference_id          TEXT NOT NULL,
    timestamp_utc         TIMESTAMPTZ NOT NULL,
    fx_rate               NUMERIC,
    metadata              JSONB,
    source_row_key        TEXT NOT NULL,
    source_row_occurrence INTEGER NOT NULL,
    reference_generated   BOOLEAN NOT NULL,
    reference_repeats     BOOLEAN NOT NULL,  -- another staged row carries its (ledger_id, reference_id)
    entry_id              BIGINT,
    known_entry_id        BIGINT,  -- the entry this source row already posted (any form)
    held_against          BIGINT   -- a vanished entry this new row may replace: held
) ON COMMIT DELETE ROWS
