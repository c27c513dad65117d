-- dual_ledger/outbox_mark.sql
-- Record a delivery outcome for a batch of outbox rows: SENT (with when), or FAILED with the
-- last error; attempts always grow by the number of requests the relay made for the batch.
UPDATE dual_ledger_outbox
   SET status = %(status)s,
       attempts = attempts + %(attempts)s,
       last_error = %(last_error)s,
       sent_at = CASE WHEN %(status)s = 'SENT' THEN now() ELSE sent_at END
 WHERE id = ANY(%(ids)s)
