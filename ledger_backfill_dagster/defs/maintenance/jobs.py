"""Maintenance jobs: apply the balance constraints, correct balance drift, roll a backfill back.

They are op jobs, not assets: each changes the ledger on an operator's request, configured in the
launchpad or with `dagster job execute -m ledger_backfill_dagster.definitions -j <job> -c
config.yaml`, e.g. for a dry run of a one-day rollback:

    ops:
      rollback_backfill:
        config:
          source_id: /data/ledger_export.csv
          partition_start: "2024-01-02"
          dry_run: true

Every run writes ledger_backfill_audit_log rows (ledger/audit.py) and shows what it did, or would
do, as run metadata. Refusals fail the run with the reasons (never with a secret in them).
"""

import enum

import dagster as dg
from pydantic import Field

from ledger_backfill_dagster.defs.backfill.common import rows_table
from ledger_backfill_dagster.ledger.constraints import ConstraintError, apply_balance_constraints
from ledger_backfill_dagster.ledger.corrections import CorrectionError, correct_balances
from ledger_backfill_dagster.ledger.rollback import (
    RollbackError,
    RollbackPlan,
    RollbackScope,
    rollback,
)
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

# ---------------------------------------------------------------------------------------------
# Balance constraints (the seed's step 5)


class BalanceConstraintsConfig(dg.Config):
    dry_run: bool = Field(
        default=False,
        description="Validate only: list what would block the constraints, apply nothing.",
    )
    require_reconciled: bool = Field(
        default=True,
        description="Also refuse while any stored balance differs from the sum of its entries "
        "(constraints would lock a wrong balance in place).",
    )
    max_listed: int = Field(
        default=50, description="Offending accounts listed at most (the total is always given)."
    )


@dg.op(out=dg.Out(dg.Nothing), tags={"kind": "postgres"})
def validate_and_apply_constraints(
    context: dg.OpExecutionContext, config: BalanceConstraintsConfig, ledger_db: LedgerDatabase
) -> dg.Output:
    """Validate every balance against 004's rules (allow_negative accounts exempt), apply
    sql/004_balance_constraints.sql and record it as migration 004, then prove enforcement with
    the seed's deliberate bad update inside a savepoint. Audited."""
    ledger_db.migrate()
    with ledger_db.connection() as conn:
        try:
            outcome = apply_balance_constraints(
                conn,
                run_id=context.run.run_id,
                dry_run=config.dry_run,
                require_reconciled=config.require_reconciled,
                max_listed=config.max_listed,
            )
        except ConstraintError as exc:
            violations = getattr(exc, "violations", [])
            raise dg.Failure(
                description=redact(str(exc)),
                allow_retries=False,
                metadata={
                    "offending_accounts": rows_table(
                        violations,
                        [
                            "account_id",
                            "currency_code",
                            "balance",
                            "available_balance",
                            "reserved_balance",
                            "broken_rules",
                        ],
                    ),
                    "drifting_accounts": rows_table(
                        getattr(exc, "drift", []),
                        ["account_id", "expected_balance", "actual_balance", "difference"],
                    ),
                },
            ) from exc
    verdict = (
        "validated, nothing applied (dry run)"
        if outcome.dry_run
        else f"applied and verified: {outcome.verification}"
    )
    context.log.info(f"balance constraints {verdict}")
    return dg.Output(
        None,
        metadata={
            "applied": dg.MetadataValue.bool(outcome.applied),
            "already_applied_before": dg.MetadataValue.bool(outcome.already_applied),
            "dry_run": dg.MetadataValue.bool(outcome.dry_run),
            "verification": dg.MetadataValue.text(outcome.verification or verdict),
            "constraints": rows_table(
                outcome.constraints, ["constraint_name", "validated", "definition"]
            ),
            "audit_id": dg.MetadataValue.int(outcome.audit_id or 0),
        },
    )


@dg.job(
    description="Step 5: validate balances, apply the balance constraints (004), verify the "
    "seed's deliberate bad update fails. Audited."
)
def apply_balance_constraints_job() -> None:
    validate_and_apply_constraints()


# ---------------------------------------------------------------------------------------------
# Corrections (the seed's scenario 3)


class CorrectionsConfig(dg.Config):
    dry_run: bool = Field(
        default=True,
        description="Report the corrections that would be posted, post nothing (the default).",
    )
    suspense_account_id: str = Field(
        default="SUSPENSE-{currency}",
        description="SUSPENSE_ACCOUNT_ID: the suspense account corrections are booked against; "
        "{currency} is replaced by the account's currency. Created (allow_negative) if missing.",
    )
    ledger_id: str = Field(default="MASTER", description="Ledger the correction entries go to.")
    asset_type: str = Field(default="fiat", description="Asset type of the correction entries.")
    accounts: list[str] = Field(
        default_factory=list, description="Only correct these accounts (empty: every account)."
    )
    reason: str = Field(
        default="", description="Operator's note added to every correction's audit row."
    )
    max_corrections: int = Field(
        default=1000,
        description="Refuse when more accounts drift than this: a systemic fault to investigate.",
    )


CORRECTION_COLUMNS = [
    "account_id",
    "currency_code",
    "stored_balance",
    "entries_sum",
    "difference",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "reference_id",
    "entry_id",
]


@dg.op(out=dg.Out(dg.Nothing), tags={"kind": "postgres"})
def correct_balance_drift(
    context: dg.OpExecutionContext, config: CorrectionsConfig, ledger_db: LedgerDatabase
) -> dg.Output:
    """Find every account whose stored balance differs from the sum of its entries and post a
    correction entry against the suspense account through post_ledger_entry, leaving the stored
    balance as it is and making the entries explain it. One audit row per correction."""
    ledger_db.migrate()
    with ledger_db.connection() as conn:
        try:
            outcome = correct_balances(
                conn,
                run_id=context.run.run_id,
                dry_run=config.dry_run,
                suspense_account_id=config.suspense_account_id,
                ledger_id=config.ledger_id,
                asset_type=config.asset_type,
                accounts=config.accounts or None,
                reason=config.reason,
                max_corrections=config.max_corrections,
            )
        except CorrectionError as exc:
            raise dg.Failure(description=redact(str(exc)), allow_retries=False) from exc
    verb = "would post" if outcome.dry_run else "posted"
    context.log.info(
        f"corrections: {verb} {len(outcome.corrections)} correction(s); "
        f"{len(outcome.available_inconsistent)} available/reserved inconsistency(ies) reported"
    )
    return dg.Output(
        None,
        metadata={
            "dry_run": dg.MetadataValue.bool(outcome.dry_run),
            "corrections": dg.MetadataValue.int(len(outcome.corrections)),
            "corrections_table": rows_table(
                [vars(c) for c in outcome.corrections], CORRECTION_COLUMNS
            ),
            "suspense_accounts_created": dg.MetadataValue.text(
                ", ".join(outcome.suspense_created) or "none"
            ),
            "skipped": rows_table(outcome.skipped, ["account_id", "difference", "why"]),
            "available_inconsistent": rows_table(
                outcome.available_inconsistent, ["account_id", "currency_code", "actual_balance"]
            ),
            "verification": dg.MetadataValue.text(outcome.verification),
        },
    )


@dg.job(
    description="Scenario 3: post audited correction entries against a suspense account for every "
    "balance that differs from its entries. Dry run by default."
)
def correct_balances_job() -> None:
    correct_balance_drift()


# ---------------------------------------------------------------------------------------------
# Rollback


class RollbackMethod(enum.Enum):
    """How to undo (member names are what config files and the launchpad use)."""

    auto = "auto"
    delete = "delete"
    reversal = "reversal"
    maintenance = "maintenance"


class RollbackConfig(dg.Config):
    source_id: str | None = Field(
        default=None, description="Undo entries of this source (BACKFILL_SOURCE_ID / file path)."
    )
    source_type: str | None = Field(
        default=None, description="Only entries of this source type (CSV, DATABASE, API, SCB)."
    )
    partition_start: str | None = Field(
        default=None, description="First partition (YYYY-MM-DD) of the range to undo."
    )
    partition_end: str | None = Field(
        default=None, description="Last partition of the range; defaults to partition_start."
    )
    backfill_run_id: str | None = Field(
        default=None, description="Undo the entries this Dagster run posted."
    )
    method: RollbackMethod = Field(
        default=RollbackMethod.auto,
        description="auto (delete before the balance constraints are applied, reversal after), "
        "delete, reversal, or maintenance (lift constraints, delete, re-apply; only on request).",
    )
    dry_run: bool = Field(
        default=True,
        description="Show exactly what would change (counts, per-account deltas), change nothing.",
    )
    force: bool = Field(
        default=False,
        description="Remove entries even if their outbox rows were already SENT to the SCB side.",
    )
    reason: str = Field(default="", description="Why: required to apply, written to the audit log.")


def plan_metadata(plan: RollbackPlan) -> dict[str, dg.MetadataValue]:
    accounts = plan.changed_accounts
    lines = [
        f"# Rollback {'plan (dry run)' if plan.dry_run else 'applied'}: method `{plan.method}`\n",
        f"- entries in scope: {plan.entries_in_scope} (already reversed: {plan.already_reversed})",
        f"- entries undone: {plan.entries_undone}",
        f"- outbox rows by status: {plan.outbox_by_status or 'none'}",
        f"- accounts changed: {len(accounts)}",
        f"- partitions reset: {len(plan.partitions)}; dependent partitions: "
        f"{len(plan.dependent_partitions)}",
        "",
        "| currency | net delta |",
        "|---|---|",
        *[f"| {c} | {d} |" for c, d in plan.deltas_by_currency.items()],
    ]
    if plan.verification:
        lines += ["", "## Verification", *[f"- {v}" for v in plan.verification]]
    return {
        "dry_run": dg.MetadataValue.bool(plan.dry_run),
        "method": dg.MetadataValue.text(plan.method),
        "entries_in_scope": dg.MetadataValue.int(plan.entries_in_scope),
        "entries_undone": dg.MetadataValue.int(plan.entries_undone),
        "already_reversed": dg.MetadataValue.int(plan.already_reversed),
        "accounts_changed": dg.MetadataValue.int(len(accounts)),
        "summary": dg.MetadataValue.md("\n".join(lines)),
        "account_deltas": rows_table(
            accounts[:500],
            ["account_id", "currency_code", "balance_before", "delta", "balance_after"],
        ),
        "partitions": rows_table(
            plan.partitions[:500] + plan.dependent_partitions[:100],
            ["source_id", "source_type", "partition_key"],
        ),
        "reset": dg.MetadataValue.json(
            {k: v for k, v in plan.reset.items() if k != "checkpoints_reset"} or {}
        ),
        "audit_id": dg.MetadataValue.int(plan.audit_id or 0),
    }


@dg.op(out=dg.Out(dg.Nothing), tags={"kind": "postgres"})
def rollback_backfill(
    context: dg.OpExecutionContext, config: RollbackConfig, ledger_db: LedgerDatabase
) -> dg.Output:
    """Undo backfilled entries scoped by source, partition range or run: delete them (before the
    balance constraints) or post reversals (after), restore balances exactly, reset the
    checkpoints so the partitions can be backfilled again. Dry run by default; always audited."""
    ledger_db.migrate()
    scope = RollbackScope(
        source_id=config.source_id,
        source_type=config.source_type,
        first_partition=config.partition_start,
        last_partition=config.partition_end,
        run_id=config.backfill_run_id,
    )
    with ledger_db.connection() as conn:
        try:
            plan = rollback(
                conn,
                scope,
                method=config.method.value,
                dry_run=config.dry_run,
                force=config.force,
                reason=config.reason,
                run_id=context.run.run_id,
            )
        except RollbackError as exc:
            raise dg.Failure(description=redact(str(exc)), allow_retries=False) from exc
    context.log.info(
        f"rollback ({plan.method}{', dry run' if plan.dry_run else ''}): "
        f"{plan.entries_undone} entries undone, {len(plan.changed_accounts)} accounts changed"
    )
    return dg.Output(None, metadata=plan_metadata(plan))


@dg.job(
    description="Undo a backfill by source, partition range or run (never by reference prefix): "
    "delete + restore before constraints, reversals after. Dry run by default; audited."
)
def rollback_job() -> None:
    rollback_backfill()


MAINTENANCE_JOBS = [apply_balance_constraints_job, correct_balances_job, rollback_job]
