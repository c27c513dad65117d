-- 003_backfill_control.sql
-- What the backfill itself needs: checkpoints (the seed's DDL, extended per partition), and a home
-- for every source row that did not become a ledger entry: rejects, duplicates, conflicts.

CREATE TABLE IF NOT EXISTS ledger_backfill_checkpoints (
    id                        SERIAL PRIMARY KEY,
    source_id                 VARCHAR(1024) NOT NULL,
    source_type               VARCHAR(50) NOT NULL,  -- 'CSV', 'API', 'DATABASE', 'SCB'
    last_processed_id         VARCHAR(255),
    last_processed_timestamp  TIMESTAMP,
    total_processed           BIGINT DEFAULT 0,
    total_successful          BIGINT DEFAULT 0,
    total_failed              BIGINT DEFAULT 0,
    status                    VARCHAR(50) DEFAULT 'IN_PROGRESS'
                              CHECK (status IN ('IN_PROGRESS', 'COMPLETED', 'FAILED', 'PAUSED')),
    started_at                TIMESTAMP DEFAULT NOW(),
    last_checkpoint_at        TIMESTAMP DEFAULT NOW(),
    completed_at              TIMESTAMP,
    error_message             TEXT,
    metadata                  JSONB,
    -- Extensions: the seed keeps one checkpoint per source; we keep one per (source, day) so a
    -- backfill resumes day by day, and we count duplicates, conflicts and rejects apart.
    partition_key             VARCHAR(32) NOT NULL DEFAULT '',
    total_duplicates          BIGINT NOT NULL DEFAULT 0,
    total_conflicts           BIGINT NOT NULL DEFAULT 0,
    total_rejected            BIGINT NOT NULL DEFAULT 0,
    total_to_process          BIGINT,
    batches_committed         BIGINT NOT NULL DEFAULT 0,
    run_id                    VARCHAR(64),
    plan_digest               VARCHAR(64),
    UNIQUE (source_id, source_type, partition_key)
);

CREATE INDEX IF NOT EXISTS idx_backfill_checkpoints_status
    ON ledger_backfill_checkpoints (status);
CREATE INDEX IF NOT EXISTS idx_backfill_checkpoints_source
    ON ledger_backfill_checkpoints (source_id, source_type);

-- Every source row that failed the entry contract, with the rule it broke. Rows whose timestamp
-- could not be read belong to no partition (partition_key NULL) and are kept once per source.
CREATE TABLE IF NOT EXISTS ledger_backfill_rejects (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id      VARCHAR(1024) NOT NULL,
    source_type    VARCHAR(50) NOT NULL,
    partition_key  VARCHAR(32),
    source_row_id  BIGINT NOT NULL,
    source_file    TEXT,
    line_number    BIGINT,
    stage          VARCHAR(32) NOT NULL,  -- 'extract' (unreadable line or no partition) or 'validate'
    raw_text       TEXT,
    raw_row        JSONB,
    reasons        TEXT[] NOT NULL,
    run_id         VARCHAR(64),
    rejected_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source_id, source_row_id)
);
CREATE INDEX IF NOT EXISTS idx_backfill_rejects_partition
    ON ledger_backfill_rejects (source_id, partition_key);

-- Repeats of an existing (ledger_id, reference_id) with identical content: skipped, counted.
CREATE TABLE IF NOT EXISTS ledger_backfill_duplicates (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id          VARCHAR(1024) NOT NULL,
    partition_key      VARCHAR(32) NOT NULL,
    source_row_id      BIGINT NOT NULL,
    line_number        BIGINT,
    ledger_id          TEXT NOT NULL,
    reference_id       TEXT NOT NULL,
    existing_entry_id  BIGINT NOT NULL,
    run_id             VARCHAR(64),
    detected_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source_id, source_row_id)
);
CREATE INDEX IF NOT EXISTS idx_backfill_duplicates_partition
    ON ledger_backfill_duplicates (source_id, partition_key);

-- Repeats of an existing (ledger_id, reference_id) with different content: never posted, held with
-- both versions for a person to decide (TigerBeetle's exists_with_different_* results).
CREATE TABLE IF NOT EXISTS ledger_backfill_conflicts (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id          VARCHAR(1024) NOT NULL,
    partition_key      VARCHAR(32) NOT NULL,
    source_row_id      BIGINT NOT NULL,
    line_number        BIGINT,
    ledger_id          TEXT NOT NULL,
    reference_id       TEXT NOT NULL,
    existing_entry_id  BIGINT NOT NULL,
    existing_entry     JSONB NOT NULL,
    incoming_entry     JSONB NOT NULL,
    differing_fields   TEXT[] NOT NULL,
    run_id             VARCHAR(64),
    detected_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source_id, source_row_id)
);
CREATE INDEX IF NOT EXISTS idx_backfill_conflicts_partition
    ON ledger_backfill_conflicts (source_id, partition_key);

-- A pause request: a running backfill of this source (or '*' for all) stops cleanly after the
-- batch it is posting, and marks its checkpoint PAUSED. Runs started after the request resume.
CREATE TABLE IF NOT EXISTS ledger_backfill_pause_requests (
    source_id     VARCHAR(1024) PRIMARY KEY,
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    requested_by  TEXT
);

-- Corrections, rollbacks and constraint applications: what, why, which run, when.
CREATE TABLE IF NOT EXISTS ledger_backfill_audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      VARCHAR(64) NOT NULL,
    scope       JSONB NOT NULL,
    details     JSONB NOT NULL,
    reason      TEXT,
    run_id      VARCHAR(64),
    dry_run     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
