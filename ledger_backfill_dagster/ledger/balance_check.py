"""The posting path's balance check, incremental: every balance equals the sum of its entries.

Checking an account the seed's way sums all its entries, so a backfill that checks after each
partition (and every CHECKPOINT_INTERVAL batches) pays O(ledger) each time and O(ledger²) over the
run: on a large ledger the check costs more than the posting it checks, and a 10M backfill crawls
(docs/performance.md, 'Why the code is shaped this way').

A `BalanceVerifier` checks each account in full once, remembering the verified pair (balance,
highest entry id its snapshot saw). Later checks verify

    stored balance = verified balance + Σ entries of the account with id > verified id

in one statement (one snapshot), an index range scan over the new entries only
(`sql/007_balance_check_indexes.sql`). A mismatch is not reported from that alone: the account is
re-checked in full, and only a full-sum difference is drift. A false alarm costs one full sum; it
happens when a concurrent writer commits an entry whose id is below one already verified.

What the incremental form does not see: an old entry (id ≤ verified) changed or deleted behind
the pipeline's back, or one committed late with an old id *and* without its balance. Those are
left to the full check the `reconciliation_report` asset (and its blocking asset check
`balances_match_entries`) runs over every account once per run.

One verifier serves a whole run (all partitions, all posting threads): its state is a dict under a
lock, and any consistent (balance, id) pair from any snapshot is a valid starting point.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from ledger_backfill_dagster.lib.sql_files import query


@dataclass(frozen=True)
class Drift:
    account_id: str
    expected_balance: Decimal
    actual_balance: Decimal | None  # None: the account no longer exists


@dataclass(frozen=True)
class _Verified:
    balance: Decimal
    through_id: int


def drifting_accounts(
    conn: psycopg.Connection, account_ids: list[str]
) -> list[tuple[str, Decimal, Decimal, Decimal]]:
    """(account, expected, stored, expected − stored) for every existing given account whose
    stored balance differs from the sum of all its entries, by account id: the full check, for
    rollback and corrections, which need the answer now and keep no verified state."""
    rows = conn.execute(
        query("reconcile/balance_check_full"), {"account_ids": account_ids}
    ).fetchall()
    return [
        (account_id, expected, actual, expected - actual)
        for account_id, expected, actual, _ in rows
        if actual is not None and expected != actual
    ]


class BalanceVerifier:
    def __init__(self) -> None:
        self._verified: dict[str, _Verified] = {}
        self._lock = threading.Lock()
        self.full_checks = 0  # accounts summed in full (first checks and fallbacks)
        self.incremental_checks = 0  # accounts checked from a verified pair

    def check(self, conn: psycopg.Connection, account_ids: set[str]) -> list[Drift]:
        """Every given account whose stored balance differs from the sum of its entries.

        Runs in the connection's current transaction; the caller commits or rolls back."""
        with self._lock:
            known = {a: self._verified[a] for a in account_ids if a in self._verified}
        unknown = sorted(account_ids - known.keys())
        suspects: list[str] = []
        if known:
            ids = sorted(known)
            rows = conn.execute(
                query("reconcile/balance_check_since"),
                {
                    "account_ids": ids,
                    "balances": [known[a].balance for a in ids],
                    "through_ids": [known[a].through_id for a in ids],
                },
            ).fetchall()
            self.incremental_checks += len(rows)
            suspects = self._record(rows)
        drift: list[Drift] = []
        for_full = sorted(set(unknown) | set(suspects))
        if for_full:
            rows = conn.execute(
                query("reconcile/balance_check_full"), {"account_ids": for_full}
            ).fetchall()
            self.full_checks += len(rows)
            for account_id in self._record(rows):
                expected, actual = next((r[1], r[2]) for r in rows if r[0] == account_id)
                drift.append(Drift(account_id, expected, actual))
        return drift

    def _record(self, rows: list[tuple]) -> list[str]:
        """Remember the accounts that match; return those that do not."""
        mismatched: list[str] = []
        with self._lock:
            for account_id, expected, actual, through_id in rows:
                if actual is not None and expected == actual:
                    self._verified[account_id] = _Verified(actual, through_id)
                else:
                    self._verified.pop(account_id, None)
                    mismatched.append(account_id)
        return mismatched
