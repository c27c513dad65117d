"""Corrections (the seed's scenario 3): explain every stored balance that differs from the sum of
its entries with a posted correction entry against a suspense account, audited one by one.

Drift means stored balance X ≠ Σ entries E for an account. Two fixes keep the ledger append-only:
reset X to E and post nothing, or post an entry that makes Σ entries equal X. We post, because
that is what an auditor accepts: the balance customers and statements have seen is not changed
behind their backs; the unexplained difference d = X − E becomes a visible, dated, referenced
booking on a suspense account (one per currency, allow_negative) that someone must investigate
and clear with ordinary entries; and nothing is deleted or rewritten. The entry goes through the
normal posting function `post_ledger_entry` (locks, currency checks, fingerprint, outbox row).

`post_ledger_entry` moves both balances, and X must not move (the entry explains it, it does not
change it), so in the same transaction the account's stored balance is moved back by the entry's
movement: first whichever of the two steps raises the balance, so no intermediate state can break
a balance constraint the final state keeps. The suspense account moves by −d like any posting, so
its own balance keeps equalling its entries, debits keep equalling credits, and the sum of the
suspense balances per currency is exactly the unexplained total.

Dry run by default: the plan (every correction, exact amounts, suspense accounts to create) is
computed under the same locks and rolled back. Accounts whose available/reserved split does not
add up to the balance are reported, not corrected: no entry can fix that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ledger_backfill_dagster.ledger import audit
from ledger_backfill_dagster.ledger.balance_check import drifting_accounts
from ledger_backfill_dagster.lib.errors import TerminalError
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query

SOURCE_ID = "ledger_corrections"
SOURCE_TYPE = "CORRECTION"
TRANSACTION_TYPE = "CORRECTION"


class CorrectionError(TerminalError):
    """Corrections cannot be planned or applied; nothing was committed."""


@dataclass
class Correction:
    account_id: str
    currency_code: str
    stored_balance: Decimal
    entries_sum: Decimal
    difference: Decimal  # stored − entries: what the correction entry must add to the entries
    suspense_account_id: str
    debit_account_id: str
    credit_account_id: str
    amount: Decimal
    reference_id: str
    entry_id: int | None = None
    audit_id: int | None = None

    @property
    def why(self) -> str:
        return (
            f"stored balance {self.stored_balance} of {self.account_id} differs from the sum of "
            f"its entries {self.entries_sum} by {self.difference} {self.currency_code}; booked to "
            f"suspense {self.suspense_account_id} pending investigation"
        )


@dataclass
class CorrectionOutcome:
    dry_run: bool
    corrections: list[Correction] = field(default_factory=list)
    suspense_created: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    available_inconsistent: list[dict] = field(default_factory=list)
    verification: str = ""


def suspense_account_for(template: str, currency: str) -> str:
    """The suspense account of a currency: the template with {currency} replaced."""
    return template.replace("{currency}", currency)


def _ensure_suspense(
    conn: psycopg.Connection, account_id: str, currency: str, outcome: CorrectionOutcome
) -> None:
    row = conn.execute(
        "SELECT currency_code, allow_negative FROM bank_accounts WHERE id = %s", (account_id,)
    ).fetchone()
    if row is None:
        conn.execute(query("maintenance/create_suspense_account"), (account_id, currency))
        outcome.suspense_created.append(account_id)
        return
    if row[0] != currency:
        raise CorrectionError(
            f"suspense account {account_id} is in {row[0]}, the correction is in {currency}: "
            "put {currency} in suspense_account_id"
        )
    if not row[1]:
        raise CorrectionError(f"suspense account {account_id} must allow a negative balance")


def _plan(
    conn: psycopg.Connection,
    outcome: CorrectionOutcome,
    *,
    run_id: str,
    template: str,
    only: set[str] | None,
    max_corrections: int,
) -> None:
    with conn.cursor(row_factory=dict_row) as cur:
        drift = cur.execute(query("reconcile/balance_drift")).fetchall()
    if only is not None:
        drift = [d for d in drift if d["account_id"] in only]
    for d in drift:
        if d["expected_balance"] == d["actual_balance"]:
            outcome.available_inconsistent.append(d)
    candidates = [d for d in drift if d["expected_balance"] != d["actual_balance"]]
    suspense_ids = {suspense_account_for(template, d["currency_code"]) for d in candidates}
    for d in candidates:
        if d["account_id"] in suspense_ids:
            outcome.skipped.append(
                {**d, "why": "a suspense account cannot be corrected against itself"}
            )
    candidates = [d for d in candidates if d["account_id"] not in suspense_ids]
    if len(candidates) > max_corrections:
        raise CorrectionError(
            f"{len(candidates)} accounts drift (more than max_corrections={max_corrections}): "
            "that is a systemic fault to investigate, not a set of corrections"
        )
    if not candidates:
        return
    for currency in sorted({d["currency_code"] for d in candidates}):
        _ensure_suspense(conn, suspense_account_for(template, currency), currency, outcome)
    accounts = sorted({d["account_id"] for d in candidates} | suspense_ids)
    conn.execute(
        "SELECT id FROM bank_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (accounts,)
    )
    # Under the locks, the drift is final: recompute it exactly for the candidates.
    currencies = {d["account_id"]: d["currency_code"] for d in candidates}
    locked = drifting_accounts(conn, sorted(currencies))
    for account_id, expected, actual, _ in locked:
        difference = actual - expected
        suspense = suspense_account_for(template, currencies[account_id])
        debit, credit = (account_id, suspense) if difference > 0 else (suspense, account_id)
        outcome.corrections.append(
            Correction(
                account_id=account_id,
                currency_code=currencies[account_id],
                stored_balance=actual,
                entries_sum=expected,
                difference=difference,
                suspense_account_id=suspense,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=abs(difference),
                reference_id=f"CORRECTION-{run_id}-{account_id}",
            )
        )


def _post(
    conn: psycopg.Connection,
    c: Correction,
    *,
    run_id: str,
    ledger_id: str,
    asset_type: str,
    note: str,
) -> None:
    metadata = {
        "correction": {
            "account_id": c.account_id,
            "stored_balance": str(c.stored_balance),
            "entries_sum": str(c.entries_sum),
            "difference": str(c.difference),
            "suspense_account_id": c.suspense_account_id,
        },
        "reason": c.why,
        "note": note or None,
        "run_id": run_id,
    }
    # The entry moves the corrected account by exactly `difference`; the stored balance must not
    # move, so it is moved back by the same amount. Raise first, lower second: never below both.
    neutralize = query("maintenance/neutralize_balance")
    if c.difference < 0:
        conn.execute(neutralize, {"d": c.difference, "a": c.account_id})
    row = one_row(
        conn.execute(
            query("maintenance/post_correction"),
            {
                "ledger": ledger_id,
                "debit": c.debit_account_id,
                "credit": c.credit_account_id,
                "amount": c.amount,
                "currency": c.currency_code,
                "asset": asset_type,
                "type": TRANSACTION_TYPE,
                "reference": c.reference_id,
                "metadata": Jsonb(metadata),
                "source": SOURCE_ID,
                "source_type": SOURCE_TYPE,
                "run": run_id,
            },
        )
    )
    c.entry_id = int(row[0])
    if c.difference > 0:
        conn.execute(neutralize, {"d": c.difference, "a": c.account_id})


def correct_balances(
    conn: psycopg.Connection,
    *,
    run_id: str,
    dry_run: bool = True,
    suspense_account_id: str = "SUSPENSE-{currency}",
    ledger_id: str = "MASTER",
    asset_type: str = "fiat",
    accounts: list[str] | None = None,
    reason: str = "",
    max_corrections: int = 1000,
) -> CorrectionOutcome:
    """Find drifting balances and (unless dry_run) post their corrections, in one transaction."""
    outcome = CorrectionOutcome(dry_run=dry_run)
    only = set(accounts) if accounts else None
    conn.commit()
    with conn.transaction():
        _plan(
            conn,
            outcome,
            run_id=run_id,
            template=suspense_account_id,
            only=only,
            max_corrections=max_corrections,
        )
        if dry_run:
            raise psycopg.Rollback()  # locks released, suspense accounts not created
        for c in outcome.corrections:
            _post(conn, c, run_id=run_id, ledger_id=ledger_id, asset_type=asset_type, note=reason)
        _audit(conn, outcome, run_id=run_id, reason=reason)
        _verify(conn, outcome)
    if dry_run:
        with conn.transaction():
            _audit(conn, outcome, run_id=run_id, reason=reason)
        outcome.verification = "dry run: nothing posted, nothing created"
    return outcome


def _audit(
    conn: psycopg.Connection, outcome: CorrectionOutcome, *, run_id: str, reason: str
) -> None:
    """One audit row per correction (what, why, which run; when is the row's created_at), and
    one per suspense account created."""
    for c in outcome.corrections:
        c.audit_id = audit.record(
            conn,
            action="BALANCE_CORRECTION",
            scope={"account_id": c.account_id, "currency_code": c.currency_code},
            details={k: v for k, v in asdict(c).items() if k != "audit_id"},
            reason=c.why + (f" ({reason})" if reason else ""),
            run_id=run_id,
            dry_run=outcome.dry_run,
        )
    for account_id in outcome.suspense_created:
        audit.record(
            conn,
            action="CREATE_SUSPENSE_ACCOUNT",
            scope={"account_id": account_id},
            details={"allow_negative": True, "account_type": "suspense"},
            reason="suspense account for balance corrections",
            run_id=run_id,
            dry_run=outcome.dry_run,
        )


def _verify(conn: psycopg.Connection, outcome: CorrectionOutcome) -> None:
    touched = sorted(
        {c.account_id for c in outcome.corrections}
        | {c.suspense_account_id for c in outcome.corrections}
    )
    remaining = drifting_accounts(conn, touched)
    skipped = {s["account_id"] for s in outcome.skipped}
    remaining = [r for r in remaining if r[0] not in skipped]
    if remaining:
        raise CorrectionError(
            f"balances still differ from their entries after correction: {remaining[:10]}"
        )
    stored: dict[str, Decimal] = dict(
        conn.execute(
            query("accounts/stored_balances"), ([c.account_id for c in outcome.corrections],)
        ).fetchall()
    )
    moved = [c for c in outcome.corrections if stored[c.account_id] != c.stored_balance]
    if moved:
        raise CorrectionError(f"corrected balances moved: {[c.account_id for c in moved]}")
    outcome.verification = (
        f"{len(outcome.corrections)} account(s) now equal the sum of their entries, their stored "
        "balances unchanged; suspense accounts consistent"
    )
