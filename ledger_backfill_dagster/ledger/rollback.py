"""Rollback of backfilled entries, scoped by lineage (source, source type, partition range, run),
never by a reference-id prefix: the seed's rollback procedures, made exact and auditable.

Methods (`auto` picks the first before balance constraints are applied, the second after):
  delete       the seed's scenario 1, fixed: delete the entries and their outbox rows and restore
               every touched balance by the exact delta (debits by amount, credits by
               credit_amount), in one transaction.
  reversal     append-only: post a reversal of each entry in force (sides swapped, both amounts
               exact, reference REVERSAL-<ledger>-<reference>, one outbox row each), so the SCB
               side hears of the undo too. An entry already reversed is left alone.
  maintenance  the seed's scenario 2, only when asked: drop the balance constraints, delete,
               restore balances, re-apply and re-validate 004 and verify enforcement, in one
               transaction (it holds an exclusive lock on bank_accounts: a maintenance window).

Removing an entry whose outbox row is SENT is refused unless forced (the SCB side has it already);
a reversal is always allowed. Every rollback — applied, dry run or refused — writes an audit row.
An applied one resets the undone partitions' checkpoints and their duplicate, conflict and reject
rows, so the partitions can be backfilled again; re-backfilling a reversed partition re-applies
its identical rows by reversing their reversals (`reinstate_reversed`, called by the poster).

A dry run computes the whole plan inside the transaction (scope, chains, locks, exact per-account
deltas, outbox statuses, partitions to reset) and rolls it back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ledger_backfill_dagster.ledger import audit, constraints
from ledger_backfill_dagster.ledger.balance_check import drifting_accounts
from ledger_backfill_dagster.lib.errors import TerminalError
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query

METHODS = ("auto", "delete", "reversal", "maintenance")
REVERSAL_PREFIX = "REVERSAL-"


class RollbackError(TerminalError):
    """A rollback could not be carried out as planned; nothing was committed."""


class RollbackRefused(RollbackError):
    """The rollback was refused before changing anything; `reasons` says why."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("rollback refused: " + " | ".join(reasons))


@dataclass(frozen=True)
class RollbackScope:
    """Which backfilled entries to undo: any combination of these, at least a source or a run or
    a partition range. Partitions are compared as the YYYY-MM-DD keys lineage records."""

    source_id: str | None = None
    source_type: str | None = None
    first_partition: str | None = None
    last_partition: str | None = None
    run_id: str | None = None

    def validated(self) -> RollbackScope:
        first, last = self.first_partition or None, self.last_partition or None
        if last and not first:
            raise RollbackRefused(["a partition range needs its first partition"])
        last = last or first
        for key in (first, last):
            if key is not None:
                try:
                    date.fromisoformat(key)
                except ValueError as exc:
                    raise RollbackRefused([f"partition {key!r} is not YYYY-MM-DD"]) from exc
        if first and last and first > last:
            raise RollbackRefused([f"partition range {first}..{last} is empty"])
        scope = RollbackScope(
            source_id=self.source_id or None,
            source_type=(self.source_type or None) and self.source_type.upper(),
            first_partition=first,
            last_partition=last,
            run_id=self.run_id or None,
        )
        if not (scope.source_id or scope.run_id or scope.first_partition):
            raise RollbackRefused(
                [
                    "give a source_id, a backfill run id or a partition range: a rollback is never "
                    "scoped by source type or reference prefix alone"
                ]
            )
        return scope

    @property
    def whole_source(self) -> bool:
        return bool(self.source_id) and not self.first_partition and not self.run_id

    def params(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "source_type": self.source_type,
            "first": self.first_partition,
            "last": self.last_partition,
            "run_id": self.run_id,
        }


@dataclass
class RollbackPlan:
    scope: RollbackScope
    method: str
    dry_run: bool
    constraints_applied: bool
    entries_in_scope: int = 0
    already_reversed: int = 0
    entries_undone: int = 0
    outbox_by_status: dict[str, int] = field(default_factory=dict)
    accounts: list[dict] = field(default_factory=list)
    partitions: list[dict] = field(default_factory=list)
    dependent_partitions: list[dict] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    reset: dict[str, Any] = field(default_factory=dict)
    verification: list[str] = field(default_factory=list)
    audit_id: int | None = None

    @property
    def changed_accounts(self) -> list[dict]:
        return [a for a in self.accounts if a["delta"] != 0]

    @property
    def deltas_by_currency(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = defaultdict(Decimal)
        for a in self.accounts:
            totals[a["currency_code"]] += a["delta"]
        return dict(sorted(totals.items()))

    def summary(self, max_accounts: int = 1000) -> dict[str, Any]:
        """The plan as JSON-ready data for the audit log and the run's metadata."""
        return {
            "method": self.method,
            "constraints_applied": self.constraints_applied,
            "entries_in_scope": self.entries_in_scope,
            "already_reversed": self.already_reversed,
            "entries_undone": self.entries_undone,
            "outbox_by_status": self.outbox_by_status,
            "accounts_changed": len(self.changed_accounts),
            "account_deltas": [
                {
                    k: a[k]
                    for k in (
                        "account_id",
                        "currency_code",
                        "balance_before",
                        "delta",
                        "balance_after",
                    )
                }
                for a in self.changed_accounts[:max_accounts]
            ],
            "deltas_by_currency": self.deltas_by_currency,
            "partitions": self.partitions,
            "dependent_partitions": self.dependent_partitions,
            "result": self.result,
            "reset": self.reset,
            "verification": self.verification,
        }


def resolve_method(method: str, constraints_applied: bool) -> str:
    if method not in METHODS:
        raise RollbackRefused([f"method must be one of {', '.join(METHODS)}, got {method!r}"])
    if method == "auto":
        return "reversal" if constraints_applied else "delete"
    if method == "maintenance" and not constraints_applied:
        return "delete"  # no constraints to lift: the maintenance procedure is a plain delete
    if method == "delete" and constraints_applied:
        raise RollbackRefused(
            [
                "balance constraints are applied (004 recorded): the ledger is append-only now; "
                "use method reversal, or maintenance in a maintenance window"
            ]
        )
    return method


def _lock_key(source_type: str, source_id: str, partition_key: str) -> str:
    # The key PartitionPoster holds while it posts a partition (ledger/posting.py).
    return f"ledger_backfill:{source_type}:{source_id}:{partition_key}"


def _select_scope(conn: psycopg.Connection, scope: RollbackScope) -> None:
    conn.execute("TRUNCATE chain_roots, undo_partitions")
    conn.execute(query("rollback/rollback_scope"), scope.params())
    conn.execute(query("rollback/undo_partitions"), scope.params())


def _partitions(conn: psycopg.Connection, dependent: bool) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("rollback/scope_partitions"), (dependent,)).fetchall()


def _lock_partitions(conn: psycopg.Connection, partitions: list[dict]) -> None:
    busy = []
    for p in partitions:
        got = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
            (_lock_key(p["source_type"], p["source_id"], p["partition_key"]),),
        ).fetchone()
        if not got or not got[0]:
            busy.append(f"{p['source_id']} {p['partition_key']}")
    if busy:
        raise RollbackRefused([f"partition(s) being posted right now: {', '.join(busy[:20])}"])


def _plan(conn: psycopg.Connection, scope: RollbackScope, method: str, plan: RollbackPlan) -> None:
    conn.execute(query("rollback/undo_temp_tables"))
    _select_scope(conn, scope)
    corrections = one_row(conn.execute(query("rollback/scope_corrections")))[0]
    if corrections:
        raise RollbackRefused(
            [
                f"the scope holds {corrections} CORRECTION entries: a correction is undone by a "
                "counter-correction, not a rollback; narrow the scope"
            ]
        )
    locked = _partitions(conn, dependent=False)
    _lock_partitions(conn, locked)
    _select_scope(conn, scope)  # again, now that no poster can add to those partitions
    plan.partitions = _partitions(conn, dependent=False)
    if any(p not in locked for p in plan.partitions):
        raise RollbackRefused(["the scope changed while it was being locked; run it again"])
    conn.execute(query("rollback/reversal_chains"))
    if method == "reversal":
        conn.execute(query("rollback/undo_targets_reversal"), {"want_reversed": False})
    else:
        conn.execute("INSERT INTO undo_targets SELECT DISTINCT entry_id FROM chain_links")
        conn.execute(query("rollback/undo_dependents"))
        plan.dependent_partitions = _partitions(conn, dependent=True)
        _lock_partitions(conn, plan.dependent_partitions)
    plan.entries_in_scope, plan.already_reversed = one_row(
        conn.execute(query("rollback/chain_depths"))
    )
    plan.entries_undone = one_row(conn.execute("SELECT count(*) FROM undo_targets"))[0]
    conn.execute(query("rollback/undo_deltas"))
    conn.execute(query("rollback/lock_undo_accounts"))
    with conn.cursor(row_factory=dict_row) as cur:
        plan.accounts = cur.execute(query("rollback/undo_plan")).fetchall()
    plan.outbox_by_status = dict(conn.execute(query("rollback/undo_outbox_status")).fetchall())


def _refusals(plan: RollbackPlan, force: bool) -> list[str]:
    reasons = []
    sent = plan.outbox_by_status.get("SENT", 0)
    if sent and plan.method != "reversal" and not force:
        reasons.append(
            f"{sent} of the entries to remove were already SENT to the SCB ledger: removing them "
            "here would leave the two ledgers apart; use method reversal, or force"
        )
    if plan.constraints_applied:
        breaking = [a for a in plan.accounts if a["breaks_constraints"]]
        if breaking:
            shown = ", ".join(
                f"{a['account_id']} ({a['currency_code']} {a['balance_before']} -> "
                f"{a['balance_after']})"
                for a in breaking[:20]
            )
            reasons.append(
                f"{len(breaking)} account(s) would break the balance constraints after the "
                f"rollback: {shown}"
            )
    return reasons


def _drift(conn: psycopg.Connection, account_ids: list[str]) -> list[tuple[str, Decimal]]:
    """(account, entries minus stored) for the touched accounts that drift at all."""
    return [(r[0], r[3]) for r in drifting_accounts(conn, account_ids)]


def _apply(conn: psycopg.Connection, plan: RollbackPlan, run_id: str | None, reason: str) -> None:
    account_ids = [a["account_id"] for a in plan.accounts]
    drift_before = _drift(conn, account_ids)
    if plan.method == "reversal":
        posted, outbox, _ = one_row(
            conn.execute(query("rollback/post_reversals"), {"run_id": run_id, "reason": reason})
        )
        plan.result = {"reversals_posted": posted, "outbox_rows_written": outbox}
        if posted != plan.entries_undone or outbox != posted:
            raise RollbackError(
                f"posted {posted} reversals and {outbox} outbox rows for "
                f"{plan.entries_undone} entries"
            )
    else:
        if plan.method == "maintenance":
            constraints.drop_constraints(conn)
        deleted, outbox, _ = one_row(conn.execute(query("rollback/rollback_delete")))
        plan.result = {"entries_deleted": deleted, "outbox_rows_deleted": outbox}
        expected_outbox = sum(plan.outbox_by_status.values())
        if deleted != plan.entries_undone or outbox != expected_outbox:
            raise RollbackError(
                f"deleted {deleted} entries and {outbox} outbox rows, planned "
                f"{plan.entries_undone} and {expected_outbox}"
            )
        if plan.method == "maintenance":
            constraints.install(conn)
            plan.verification.append(constraints.verify_enforced(conn))
    after: dict[str, Decimal] = dict(
        conn.execute(query("accounts/stored_balances"), (account_ids,)).fetchall()
    )
    wrong = [a for a in plan.accounts if after.get(a["account_id"]) != a["balance_after"]]
    if wrong:
        raise RollbackError(
            "balances did not move as planned: "
            + ", ".join(
                f"{a['account_id']} is {after.get(a['account_id'])}, planned {a['balance_after']}"
                for a in wrong[:10]
            )
        )
    plan.verification.append(f"{len(account_ids)} balance(s) moved exactly as planned")
    drift_after = _drift(conn, account_ids)
    if drift_after != drift_before:
        raise RollbackError(
            f"balance vs entries drift changed: before {drift_before[:5]}, after {drift_after[:5]}"
        )
    plan.verification.append(
        "every touched balance still equals the sum of its entries"
        if not drift_after
        else f"{len(drift_after)} touched account(s) drifted before and drift by the same amount"
    )
    params = {
        **plan.scope.params(),
        "deleting": plan.method != "reversal",
        "whole_source": plan.scope.whole_source,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        plan.reset = cur.execute(query("rollback/undo_reset_state"), params).fetchone() or {}


def rollback(
    conn: psycopg.Connection,
    scope: RollbackScope,
    *,
    method: str = "auto",
    dry_run: bool = True,
    force: bool = False,
    reason: str = "",
    run_id: str | None = None,
) -> RollbackPlan:
    """Plan the rollback and, unless dry_run, carry it out in one transaction; audited always.

    Raises RollbackRefused (audited) when the scope is invalid, a partition is being posted,
    SENT outbox rows would be removed without force, or a balance would break the constraints."""
    applied = constraints.constraints_applied(conn)
    conn.commit()
    audit_scope = {"requested_method": method, "force": force, **asdict(scope)}
    try:
        scope = scope.validated()
        audit_scope.update(asdict(scope))
        resolved = resolve_method(method, applied)
        if not dry_run and not reason.strip():
            raise RollbackRefused(["a reason is required to apply a rollback (it is audited)"])
        plan = RollbackPlan(scope, resolved, dry_run, applied)
        with conn.transaction():
            if resolved == "maintenance" and not dry_run:  # a dry run never blocks posting
                conn.execute("SET LOCAL lock_timeout = '60s'")
                conn.execute("LOCK TABLE bank_accounts IN ACCESS EXCLUSIVE MODE")
            _plan(conn, scope, resolved, plan)
            refusals = _refusals(plan, force)
            if refusals:
                raise RollbackRefused(refusals)
            if dry_run:
                raise psycopg.Rollback()
            _apply(conn, plan, run_id, reason)
            plan.audit_id = audit.record(
                conn,
                action="ROLLBACK",
                scope=audit_scope,
                details=plan.summary(),
                reason=reason,
                run_id=run_id,
                dry_run=False,
            )
    except RollbackRefused as exc:
        conn.rollback()
        audit.record_alone(
            conn,
            action="ROLLBACK_REFUSED",
            scope=audit_scope,
            details={"reasons": exc.reasons},
            reason=reason or None,
            run_id=run_id,
            dry_run=dry_run,
        )
        raise
    if dry_run:
        plan.audit_id = audit.record_alone(
            conn,
            action="ROLLBACK",
            scope=audit_scope,
            details=plan.summary(),
            reason=reason or "dry run",
            run_id=run_id,
            dry_run=True,
        )
    return plan


def reinstate_reversed(
    conn: psycopg.Connection | psycopg.Cursor, entry_ids: list[int], run_id: str | None
) -> int:
    """Re-apply those of `entry_ids` whose effect a rollback reversed, in the caller's transaction.

    Called by the poster for rows it recognises as already posted by the same source row: after a
    reversal rollback the row's entry is still in the ledger (append-only) but no longer in force,
    so the re-backfill reverses the reversal (deterministic reference REVERSAL-<ledger>-<ref of
    the reversal>). The caller must hold the locks of the accounts involved. Returns how many were
    re-applied; 0 at the cost of one index probe per entry when nothing was ever reversed."""
    if not entry_ids:
        return 0
    reversed_any = conn.execute(query("rollback/reversed_entries_exist"), (entry_ids,)).fetchone()
    if not reversed_any or not reversed_any[0]:
        return 0
    conn.execute(query("rollback/undo_temp_tables"))
    conn.execute(
        "INSERT INTO chain_roots SELECT unnest(%s::BIGINT[]) ON CONFLICT DO NOTHING", (entry_ids,)
    )
    conn.execute(query("rollback/reversal_chains"))
    conn.execute(query("rollback/undo_targets_reversal"), {"want_reversed": True})
    posted, _, _ = one_row(
        conn.execute(
            query("rollback/post_reversals"),
            {"run_id": run_id, "reason": "re-backfill of a rolled-back partition"},
        )
    )
    conn.execute("TRUNCATE chain_roots, chain_links, undo_targets")
    return int(posted)
