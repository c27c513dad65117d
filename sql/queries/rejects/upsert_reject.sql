-- rejects/upsert_reject.sql
-- Quarantine one source row with its position, raw content and reasons. A source row is rejected
-- once: a re-run (or a later stage refusing the same row) updates it where it is now.
-- Parameters (positional): source_id, source_type, partition_key, source_row_id, source_file,
-- line_number, stage, raw_text, raw_row (JSON), reasons (text[]), run_id.
INSERT INTO ledger_backfill_rejects (
    source_id, source_type, partition_key, source_row_id, source_file, line_number, stage,
    raw_text, raw_row, reasons, run_id)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (source_id, source_row_id) DO UPDATE
   SET partition_key = EXCLUDED.partition_key, stage = EXCLUDED.stage,
       raw_text = EXCLUDED.raw_text, raw_row = EXCLUDED.raw_row, reasons = EXCLUDED.reasons,
       run_id = EXCLUDED.run_id, rejected_at = now()
