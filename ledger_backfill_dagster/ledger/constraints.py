"""Balance constraints (the seed's step 5): validate, apply `sql/004_balance_constraints.sql`, and
prove the constraints are enforced.

The seed's 5.1 validation counts every account with a negative available balance; a ledger's
income, equity, clearing and suspense accounts run negative by design, so the validation here asks
exactly what 004's constraints will ask (allow_negative accounts exempt, reserved_balance never
negative) and names the accounts that fail. By default it also refuses while any stored balance
differs from the sum of its entries: constraints would lock a wrong balance in place.

Applying runs 004 and records it in ledger_schema_migrations as version 004 in one transaction,
then performs the seed's deliberate bad update (5.3) on a non-negative account inside a
savepoint: the update must fail with a check violation, or nothing is committed. The audit row is
written in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.rows import dict_row

from ledger_backfill_dagster.ledger import audit
from ledger_backfill_dagster.ledger.migrations import checksum
from ledger_backfill_dagster.lib.errors import TerminalError
from ledger_backfill_dagster.lib.sql_files import query, sql_dir

MIGRATION_VERSION = "004"
CONSTRAINT_NAMES = (
    "bank_accounts_available_balance_check",
    "bank_accounts_balance_within_check",
    "bank_accounts_reserved_balance_check",
)
PROBE_ACCOUNT = "__balance_constraint_probe__"
_LOCK_KEY = "ledger_backfill:balance_constraints"


class ConstraintError(TerminalError):
    """The balance constraints cannot be applied or are not enforced."""


class ConstraintValidationError(ConstraintError):
    """Pre-constraint validation failed: carries the offending accounts."""

    def __init__(self, violations: list[dict], total: int, drift: list[dict]) -> None:
        self.violations = violations
        self.total = total
        self.drift = drift
        parts = []
        if violations:
            shown = "; ".join(
                f"{v['account_id']} ({v['currency_code']}): {', '.join(v['broken_rules'])} "
                f"[balance {v['balance']}, available {v['available_balance']}, "
                f"reserved {v['reserved_balance']}]"
                for v in violations[:20]
            )
            more = f" and {total - 20} more" if total > 20 else ""
            parts.append(f"{total} account(s) would break the balance constraints: {shown}{more}")
        if drift:
            shown = "; ".join(
                f"{d['account_id']}: stored {d['actual_balance']}, entries sum to "
                f"{d['expected_balance']}"
                for d in drift[:20]
            )
            parts.append(
                f"{len(drift)} account balance(s) differ from the sum of their entries: {shown} "
                "(run correct_balances_job first, or set require_reconciled: false)"
            )
        super().__init__("balance constraints not applied: " + " | ".join(parts))


class ConstraintNotEnforcedError(ConstraintError):
    """The constraints are missing, or the deliberate bad update was accepted."""


@dataclass
class ConstraintOutcome:
    applied: bool
    already_applied: bool
    dry_run: bool
    violations: list[dict] = field(default_factory=list)
    violations_total: int = 0
    drift: list[dict] = field(default_factory=list)
    constraints: list[dict] = field(default_factory=list)
    verification: str = ""
    audit_id: int | None = None


def migration_path() -> Path:
    matches = sorted(sql_dir().glob(f"{MIGRATION_VERSION}_*.sql"))
    if not matches:
        raise ConstraintError(f"no {MIGRATION_VERSION}_*.sql migration in {sql_dir()}")
    return matches[0]


def constraints_applied(conn: psycopg.Connection) -> bool:
    """True once 004 is recorded in ledger_schema_migrations (the ledger is then append-only)."""
    row = conn.execute(
        "SELECT 1 FROM ledger_schema_migrations WHERE version = %s", (MIGRATION_VERSION,)
    ).fetchone()
    return row is not None


def find_violations(conn: psycopg.Connection, limit: int) -> tuple[list[dict], int]:
    """Accounts that 004's constraints would reject, with the rules each breaks, and the total."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("maintenance/constraint_violations"), {"limit": limit}).fetchall()
    total = int(rows[0]["total_violations"]) if rows else 0
    for row in rows:
        row.pop("total_violations")
    return rows, total


def find_drift(conn: psycopg.Connection, limit: int) -> list[dict]:
    """Accounts whose stored balance differs from the sum of their entries (the seed's 6.2)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("reconcile/balance_drift")).fetchmany(limit)


def installed_constraints(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("maintenance/balance_constraint_names")).fetchall()


def drop_constraints(conn: psycopg.Connection) -> None:
    """Remove the balance constraints (the maintenance procedure's "disable"; PostgreSQL cannot
    disable a CHECK constraint, so it is dropped and 004 re-adds and re-validates it)."""
    for name in CONSTRAINT_NAMES:
        conn.execute(
            sql.SQL("ALTER TABLE bank_accounts DROP CONSTRAINT IF EXISTS {}").format(
                sql.Identifier(name)
            )
        )


def install(conn: psycopg.Connection) -> None:
    """Run 004 (it drops and re-adds each constraint, validating every row) and record it."""
    path = migration_path()
    conn.execute(path.read_text(encoding="utf-8"))
    conn.execute(query("schema/record_migration"), (MIGRATION_VERSION, path.name, checksum(path)))


def verify_enforced(conn: psycopg.Connection) -> str:
    """Prove the constraints hold, inside the caller's transaction: every constraint present and
    validated, and the seed's deliberate bad update (available_balance = -1 on an account that may
    not go negative) rejected inside a savepoint. Raises ConstraintNotEnforcedError otherwise; the
    caller's transaction must then roll back (a bad update that succeeded is still in it)."""
    present = {c["constraint_name"]: c for c in installed_constraints(conn)}
    missing = [n for n in CONSTRAINT_NAMES if n not in present]
    unvalidated = [n for n in CONSTRAINT_NAMES if n in present and not present[n]["validated"]]
    if missing or unvalidated:
        raise ConstraintNotEnforcedError(
            f"balance constraints missing {missing} or not validated {unvalidated}"
        )
    target = conn.execute(
        "SELECT id FROM bank_accounts WHERE NOT allow_negative ORDER BY id LIMIT 1"
    ).fetchone()
    try:
        with conn.transaction():
            if target is not None:
                conn.execute(
                    "UPDATE bank_accounts SET available_balance = -1 WHERE id = %s", (target[0],)
                )
            else:  # no customer account yet: probe with a throw-away one instead
                conn.execute(query("maintenance/constraint_probe_account"), (PROBE_ACCOUNT,))
    except pgerrors.CheckViolation as exc:
        subject = f"account {target[0]}" if target is not None else "a probe account"
        return (
            f"the deliberate bad update (available_balance = -1 on {subject}) was rejected by "
            f"{exc.diag.constraint_name}"
        )
    raise ConstraintNotEnforcedError(
        "the deliberate bad update (available_balance = -1 on a non-negative account) succeeded"
    )


def apply_balance_constraints(
    conn: psycopg.Connection,
    *,
    run_id: str | None,
    dry_run: bool = False,
    require_reconciled: bool = True,
    max_listed: int = 50,
) -> ConstraintOutcome:
    """Validate, then (unless dry_run) apply 004 and verify enforcement, audited either way.

    Raises ConstraintValidationError (after auditing the refusal) when an account would break
    the constraints or, with require_reconciled, a balance differs from its entries."""
    with conn.transaction():
        # One applier at a time; posting continues meanwhile until 004's ALTER TABLEs.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_KEY,))
        already = constraints_applied(conn)
        violations, total = find_violations(conn, max_listed)
        drift = find_drift(conn, max_listed) if require_reconciled else []
        outcome = ConstraintOutcome(
            applied=False,
            already_applied=already,
            dry_run=dry_run,
            violations=violations,
            violations_total=total,
            drift=drift,
        )
        scope = {"migration": MIGRATION_VERSION, "require_reconciled": require_reconciled}
        if violations or drift:
            refusal = ConstraintValidationError(violations, total, drift)
        elif dry_run:
            refusal = None
        else:
            refusal = None
            try:
                with conn.transaction():
                    install(conn)
            except pgerrors.CheckViolation as exc:
                raise ConstraintError(
                    "a balance changed between validation and applying the constraints and "
                    f"breaks them: {exc.diag.message_primary}; validate again"
                ) from exc
            outcome.verification = verify_enforced(conn)
            outcome.constraints = installed_constraints(conn)
            outcome.applied = True
            outcome.audit_id = audit.record(
                conn,
                action="APPLY_BALANCE_CONSTRAINTS",
                scope=scope,
                details={
                    "already_applied_before": already,
                    "constraints": outcome.constraints,
                    "verification": outcome.verification,
                },
                reason="step 5: balances validated, constraints applied and verified",
                run_id=run_id,
                dry_run=False,
            )
            return outcome
    details = {
        "already_applied_before": already,
        "violations_total": total,
        "violations": violations,
        "drifting_accounts": drift,
    }
    if refusal is not None:
        audit.record_alone(
            conn,
            action="APPLY_BALANCE_CONSTRAINTS_REFUSED",
            scope=scope,
            details=details,
            reason=str(refusal)[:2000],
            run_id=run_id,
            dry_run=dry_run,
        )
        raise refusal
    outcome.audit_id = audit.record_alone(
        conn,
        action="APPLY_BALANCE_CONSTRAINTS",
        scope=scope,
        details=details,
        reason="dry run: validation passed, nothing applied",
        run_id=run_id,
        dry_run=True,
    )
    return outcome
