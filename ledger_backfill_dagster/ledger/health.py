"""What the ledger says about failures someone must act on, read in one query for the alert
sensor (defs/operations/alerts.py): outbox rows FAILED, and backfilled entries without an
outbox row."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from ledger_backfill_dagster.lib.rows import named_row, one_row
from ledger_backfill_dagster.lib.sql_files import query


@dataclass(frozen=True)
class LedgerHealth:
    outbox_failed: int
    outbox_failed_last_id: int
    entries_without_outbox: int


def read_health(conn: psycopg.Connection) -> LedgerHealth:
    with conn.cursor(row_factory=named_row) as cur:
        row = one_row(cur.execute(query("monitoring/ledger_health")))
    return LedgerHealth(
        outbox_failed=int(row.outbox_failed),
        outbox_failed_last_id=int(row.outbox_failed_last_id),
        entries_without_outbox=int(row.entries_without_outbox),
    )
