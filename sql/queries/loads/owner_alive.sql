-- loads/owner_alive.sql
-- Does another session of this database hold the load lock (posting.LOAD_LOCK_KEY, a bigint
-- advisory key: its high half in classid, its low half in objid) exclusively, that is, is an
-- initial load running? Live posting sessions hold it shared. Parameters: key.
SELECT EXISTS (
    SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory'
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND (classid::BIGINT << 32) | objid::BIGINT = %(key)s
       AND objsubid = 1
       AND mode = 'ExclusiveLock'
       AND granted
       AND pid <> pg_backend_pid()) AS alive
