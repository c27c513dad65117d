-- loads/other_writers.sql
-- Other sessions holding a lock on the ledger's entry tables right now that a writer takes
-- (anything above a plain read's ACCESS SHARE), with their application name: an initial load
-- refuses to start beside them. Posting runs of this product are kept out by the load lock
-- (posting.LOAD_LOCK_KEY) whether or not they are inside a transaction at this moment.
SELECT DISTINCT a.pid, a.application_name, a.state
  FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation IN ('ledger_entries'::regclass, 'dual_ledger_outbox'::regclass)
   AND l.mode <> 'AccessShareLock'
   AND l.pid <> pg_backend_pid()
 ORDER BY a.pid
