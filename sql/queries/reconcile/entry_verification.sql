-- reconcile/entry_verification.sql
-- The seed's 6.1 entry verification, scoped by lineage instead of a 'BACKFILL-%%' reference
-- prefix (which real reference ids need not carry).
SELECT count(*) AS total_entries,
       count(DISTINCT (ledger_id, reference_id)) AS unique_references,
       count(DISTINCT ledger_id) AS unique_ledgers,
       min(timestamp_utc) AS earliest_entry,
       max(timestamp_utc) AS latest_entry
  FROM ledger_entries
 WHERE backfill_source_id = %(source_id)s
   AND backfill_partition = ANY(%(partition_keys)s)
