"""The Checkpoint Service: one row per (source, partition) in ledger_backfill_checkpoints.

The posting loop advances the checkpoint inside each batch's own transaction (see posting.py), so
the checkpoint can never run ahead of or behind the ledger. This module owns the rest of its
lifecycle: IN_PROGRESS → COMPLETED, or FAILED / PAUSED with a message, and back to IN_PROGRESS on
resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ledger_backfill_dagster.lib.redaction import redact

IN_PROGRESS, COMPLETED, FAILED, PAUSED = "IN_PROGRESS", "COMPLETED", "FAILED", "PAUSED"


@dataclass
class Checkpoint:
    id: int
    status: str
    last_processed_id: int | None
    total_processed: int
    total_successful: int
    total_failed: int
    total_duplicates: int
    total_conflicts: int
    total_rejected: int
    batches_committed: int
    plan_digest: str | None


def open_checkpoint(
    conn: psycopg.Connection,
    *,
    source_id: str,
    source_type: str,
    partition_key: str,
    run_id: str,
    plan_digest: str,
    to_process: int,
    rejected: int,
    force_redo: bool,
) -> tuple[Checkpoint, bool]:
    """Fetch or create the checkpoint and decide: (checkpoint to continue from, skip?).

    COMPLETED with the same plan is skipped unless forced. Any other state with the same plan
    resumes after its last committed batch. A different plan (the source changed) starts over;
    rows already in the ledger are then recognised as ALREADY_POSTED, not posted twice.
    """
    key = (source_id, source_type, partition_key)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key)"
            " VALUES (%s, %s, %s) ON CONFLICT (source_id, source_type, partition_key) DO NOTHING",
            key,
        )
        row = cur.execute(
            "SELECT * FROM ledger_backfill_checkpoints"
            " WHERE source_id = %s AND source_type = %s AND partition_key = %s FOR UPDATE",
            key,
        ).fetchone()
        assert row is not None
        same_plan = row["plan_digest"] == plan_digest
        if row["status"] == COMPLETED and same_plan and not force_redo:
            return _checkpoint(row), True
        restart = not same_plan or row["status"] == COMPLETED
        cur.execute(
            """
            UPDATE ledger_backfill_checkpoints
               SET status = 'IN_PROGRESS', run_id = %(run_id)s, plan_digest = %(digest)s,
                   total_to_process = %(to_process)s, total_rejected = %(rejected)s,
                   error_message = NULL, completed_at = NULL, last_checkpoint_at = NOW(),
                   started_at = CASE WHEN %(restart)s THEN NOW() ELSE started_at END,
                   last_processed_id = CASE WHEN %(restart)s THEN NULL ELSE last_processed_id END,
                   last_processed_timestamp = CASE WHEN %(restart)s THEN NULL
                                                   ELSE last_processed_timestamp END,
                   total_processed = CASE WHEN %(restart)s THEN 0 ELSE total_processed END,
                   total_successful = CASE WHEN %(restart)s THEN 0 ELSE total_successful END,
                   total_failed = CASE WHEN %(restart)s THEN 0 ELSE total_failed END,
                   total_duplicates = CASE WHEN %(restart)s THEN 0 ELSE total_duplicates END,
                   total_conflicts = CASE WHEN %(restart)s THEN 0 ELSE total_conflicts END,
                   batches_committed = CASE WHEN %(restart)s THEN 0 ELSE batches_committed END
             WHERE id = %(id)s
         RETURNING *
            """,
            {
                "run_id": run_id,
                "digest": plan_digest,
                "to_process": to_process,
                "rejected": rejected,
                "restart": restart,
                "id": row["id"],
            },
        )
        updated = cur.fetchone()
        assert updated is not None
        if restart:
            # The run classifies every row of the partition again: what earlier runs recorded
            # is replaced, not added to (a re-export may have moved rows to other lines).
            for table in ("ledger_backfill_duplicates", "ledger_backfill_conflicts"):
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE source_id = %s AND partition_key = %s").format(
                        sql.Identifier(table)
                    ),
                    (source_id, partition_key),
                )
            cur.execute(
                "DELETE FROM ledger_backfill_rejects"
                " WHERE source_id = %s AND partition_key = %s AND stage = 'post'",
                (source_id, partition_key),
            )
        return _checkpoint(updated), False


def _checkpoint(row: dict) -> Checkpoint:
    last = row["last_processed_id"]
    return Checkpoint(
        id=row["id"],
        status=row["status"],
        last_processed_id=int(last) if last is not None else None,
        total_processed=row["total_processed"] or 0,
        total_successful=row["total_successful"] or 0,
        total_failed=row["total_failed"] or 0,
        total_duplicates=row["total_duplicates"],
        total_conflicts=row["total_conflicts"],
        total_rejected=row["total_rejected"],
        batches_committed=row["batches_committed"],
        plan_digest=row["plan_digest"],
    )


# Advance by one batch, in the batch's own transaction. Guarded by the last row the poster knows
# was committed: when a COMMIT went through but its acknowledgement was lost (connection cut,
# server restart) the retried batch finds the checkpoint already past it and updates nothing,
# so the counters are never advanced twice (see posting.py).
ADVANCE = """
UPDATE ledger_backfill_checkpoints
   SET last_processed_id = %(last_id)s,
       last_processed_timestamp = %(last_ts)s,
       total_processed = total_processed + %(processed)s,
       total_successful = total_successful + %(successful)s,
       total_failed = total_failed + %(conflicts)s,
       total_duplicates = total_duplicates + %(duplicates)s,
       total_conflicts = total_conflicts + %(conflicts)s,
       batches_committed = batches_committed + 1,
       last_checkpoint_at = NOW()
 WHERE id = %(id)s
   AND last_processed_id IS NOT DISTINCT FROM %(previous_last_id)s
"""


def finish(
    conn: psycopg.Connection,
    checkpoint_id: int,
    status: str,
    message: str | None = None,
    metadata: dict | None = None,
) -> None:
    """Move a checkpoint to COMPLETED, FAILED or PAUSED (in its own transaction)."""
    with conn.transaction():
        conn.execute(
            """
            UPDATE ledger_backfill_checkpoints
               SET status = %s, error_message = %s, last_checkpoint_at = NOW(),
                   completed_at = CASE WHEN %s = 'COMPLETED' THEN NOW() ELSE NULL END,
                   metadata = coalesce(metadata, '{}'::jsonb) || %s
             WHERE id = %s
            """,
            (
                status,
                redact(message) if message else None,
                status,
                Jsonb(metadata or {}),
                checkpoint_id,
            ),
        )
