"""The audit trail of maintenance: one ledger_backfill_audit_log row per constraint application,
correction and rollback (and per refusal or dry run of one): what, why, which run, when.

Rows are written in the transaction of the change they describe, so a change is never committed
without its audit row and an audit row never describes a change that was rolled back. Refusals and
dry runs, which change nothing, are written in their own short transaction.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query


def _default(value: Any) -> Any:
    # Money stays exact: a Decimal is written as its text, never as a float.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def as_json(value: Any) -> Jsonb:
    return Jsonb(value, dumps=lambda v: json.dumps(v, default=_default, sort_keys=True))


def record(
    conn: psycopg.Connection | psycopg.Cursor,
    *,
    action: str,
    scope: dict[str, Any],
    details: dict[str, Any],
    reason: str | None,
    run_id: str | None,
    dry_run: bool,
) -> int:
    """Write one audit row in the caller's transaction; returns its id."""
    row = one_row(
        conn.execute(
            query("maintenance/record_audit"),
            (
                action,
                as_json(scope),
                as_json(details),
                redact(reason) if reason else None,
                run_id,
                dry_run,
            ),
        )
    )
    return int(row[0])


def record_alone(conn: psycopg.Connection, **kwargs: Any) -> int:
    """Write one audit row in a transaction of its own (refusals, dry runs)."""
    with conn.transaction():
        return record(conn, **kwargs)
