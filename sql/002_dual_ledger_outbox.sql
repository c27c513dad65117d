-- 002_dual_ledger_outbox.sql
-- The transactional outbox for dual-ledger sync (the seed's scenario 4 and its 6.3 queries).
-- Every posted entry gets one row, written in the same transaction as the entry; a relay marks it
-- SENT after delivery, or FAILED with the last error once its attempts are exhausted.

CREATE TABLE IF NOT EXISTS dual_ledger_outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger_entry_id  BIGINT NOT NULL,
    ledger_id        TEXT NOT NULL,
    reference_id     TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'PENDING'
                     CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    CONSTRAINT dual_ledger_outbox_entry_key UNIQUE (ledger_entry_id)
);

CREATE INDEX IF NOT EXISTS idx_dual_ledger_outbox_status ON dual_ledger_outbox (status);
CREATE INDEX IF NOT EXISTS idx_dual_ledger_outbox_reference
    ON dual_ledger_outbox (ledger_id, reference_id);
