-- rejects/unpartitioned_rows.sql
-- The rejects of a source that no partition holds (rejects/unpartitioned_count.sql counts them),
-- in source row order, each with its raw row as JSON text (or the raw line when none was parsed):
-- the validate stage reports them beside the partitions' own.
-- Parameters (positional): source_id.
SELECT source_row_id, source_file, line_number, reasons, coalesce(raw_row::text, raw_text)
  FROM ledger_backfill_rejects
 WHERE source_id = %s AND partition_key IS NULL
 ORDER BY source_row_id
