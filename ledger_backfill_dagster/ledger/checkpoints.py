"""The Checkpoint Service: one row per (source, partition) in ledger_backfill_checkpoints.

The posting loop advances the checkpoint inside each batch's own transaction (see posting.py), so
the checkpoint can never run ahead of or behind the ledger. This module owns the rest of its
lifecycle: IN_PROGRESS → COMPLETED, or FAILED / PAUSED with a message, and back to IN_PROGRESS on
resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query

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
    fresh: bool = False  # created by this opening: no run had opened the partition before


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
        cur.execute(query("checkpoints/create"), key)
        row = one_row(cur.execute(query("checkpoints/lock"), key))
        same_plan = row["plan_digest"] == plan_digest
        fresh = row["plan_digest"] is None
        if row["status"] == COMPLETED and same_plan and not force_redo:
            return _checkpoint(row), True
        restart = not same_plan or row["status"] == COMPLETED
        cur.execute(
            query("checkpoints/resume"),
            {
                "run_id": run_id,
                "digest": plan_digest,
                "to_process": to_process,
                "rejected": rejected,
                "restart": restart,
                "id": row["id"],
            },
        )
        updated = one_row(cur)
        if restart:
            _clear_outcomes(cur, source_id, [partition_key])
        opened = _checkpoint(updated)
        opened.fresh = fresh
        return opened, False


@dataclass(frozen=True)
class GroupMember:
    """What opening a group member's checkpoint needs of its plan."""

    partition_key: str
    digest: str
    to_process: int
    rejected: int


class GroupNotFresh(Exception):
    """A member of a group has a committed batch of its current plan: it must resume alone."""


def open_group(
    conn: psycopg.Connection,
    *,
    source_id: str,
    source_type: str,
    run_id: str,
    members: list[GroupMember],
    force_redo: bool,
) -> tuple[dict[str, Checkpoint], set[str]]:
    """`open_checkpoint` for a group of partitions posted in one batch, in one transaction:
    (checkpoints opened for this run by partition, partitions skipped as COMPLETED).

    Every opened checkpoint starts over (restart), which is what `open_checkpoint` decides for
    each of them too: a group only takes partitions with no committed batch of their current
    plan. Should one have gained one since the group was formed (another run), GroupNotFresh is
    raised and nothing changes."""
    keys = [m.partition_key for m in members]
    by_key = {m.partition_key: m for m in members}
    names = {"source_id": source_id, "source_type": source_type, "partition_keys": keys}
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("checkpoints/create_many"), names)
        rows = cur.execute(query("checkpoints/lock_many"), names).fetchall()
        skipped: set[str] = set()
        opening: list[dict] = []
        for row in rows:
            member = by_key[row["partition_key"]]
            same_plan = row["plan_digest"] == member.digest
            if row["status"] == COMPLETED and same_plan and not force_redo:
                skipped.add(member.partition_key)
            elif same_plan and row["status"] != COMPLETED and row["last_processed_id"] is not None:
                raise GroupNotFresh(member.partition_key)
            else:
                opening.append(row)
        if not opening:
            return {}, skipped
        chosen = [by_key[row["partition_key"]] for row in opening]
        opened = cur.execute(
            query("checkpoints/restart_many"),
            {
                "run_id": run_id,
                "ids": [row["id"] for row in opening],
                "digests": [m.digest for m in chosen],
                "to_process": [m.to_process for m in chosen],
                "rejected": [m.rejected for m in chosen],
            },
        ).fetchall()
        _clear_outcomes(cur, source_id, [m.partition_key for m in chosen])
    return {row["partition_key"]: _checkpoint(row) for row in opened}, skipped


def _clear_outcomes(cur: psycopg.Cursor[Any], source_id: str, partition_keys: list[str]) -> None:
    """What a restarted checkpoint clears: the duplicates and conflicts earlier runs recorded,
    and the rows the database refused at posting (stage 'post'); the run classifies every row
    of the partition again, so they are replaced, not added to (a re-export may have moved rows
    to other lines)."""
    params = {"source_id": source_id, "partition_keys": partition_keys}
    cur.execute(query("checkpoints/clear_outcomes_many"), params)
    cur.execute(query("rejects/clear_partitions"), {**params, "stage": "post"})


def complete_group(conn: psycopg.Connection, summaries: dict[int, dict]) -> None:
    """`finish` with COMPLETED for a group's checkpoints (by id, with each one's summary)."""
    with conn.transaction():
        conn.execute(
            query("checkpoints/complete_many"),
            {"ids": list(summaries), "metadata": [Jsonb(m) for m in summaries.values()]},
        )


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
            query("checkpoints/finish"),
            (
                status,
                redact(message) if message else None,
                status,
                Jsonb(metadata or {}),
                checkpoint_id,
            ),
        )
