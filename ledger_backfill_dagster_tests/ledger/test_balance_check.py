"""The incremental balance check (ledger/balance_check.py) finds what the full sum finds."""

from __future__ import annotations

import threading
from decimal import Decimal

import psycopg

from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier

ACCOUNTS = ["A", "B", "C", "D"]


def _accounts(conn: psycopg.Connection) -> None:
    for account_id in ACCOUNTS:
        conn.execute(
            "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES (%s, 'EUR', true)",
            (account_id,),
        )


def _post(conn: psycopg.Connection, debit: str, credit: str, amount: str, ref: str) -> None:
    """An entry with both balances moved, as every writer of the ledger must."""
    conn.execute(
        """INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id, amount,
               currency_code, credit_amount, credit_currency_code, asset_type, transaction_type,
               reference_id, timestamp_utc, content_fingerprint)
           VALUES ('L', %s, %s, %s, 'EUR', %s, 'EUR', 'fiat', 'transfer', %s, now(), %s)""",
        (debit, credit, Decimal(amount), Decimal(amount), ref, ref),
    )
    conn.execute("UPDATE bank_accounts SET balance = balance + %s WHERE id = %s", (amount, debit))
    conn.execute("UPDATE bank_accounts SET balance = balance - %s WHERE id = %s", (amount, credit))


def test_first_check_is_full_later_ones_incremental_and_both_exact(conn) -> None:
    _accounts(conn)
    _post(conn, "A", "B", "10.01", "r1")
    verifier = BalanceVerifier()
    assert verifier.check(conn, set(ACCOUNTS)) == []
    assert (verifier.full_checks, verifier.incremental_checks) == (4, 0)
    for n in range(5):
        _post(conn, "B", "C", "0.000001", f"s{n}")
        assert verifier.check(conn, {"B", "C"}) == []
    assert (verifier.full_checks, verifier.incremental_checks) == (4, 10)


def test_balance_moved_without_an_entry_is_drift(conn) -> None:
    _accounts(conn)
    _post(conn, "A", "B", "5", "r1")
    verifier = BalanceVerifier()
    assert verifier.check(conn, {"A", "B"}) == []
    conn.execute("UPDATE bank_accounts SET balance = balance + 0.01 WHERE id = 'B'")
    drift = verifier.check(conn, {"A", "B"})
    assert [(d.account_id, d.expected_balance, d.actual_balance) for d in drift] == [
        ("B", Decimal("-5"), Decimal("-4.99"))
    ]
    # Once repaired, the account verifies again (and is then remembered again).
    conn.execute("UPDATE bank_accounts SET balance = balance - 0.01 WHERE id = 'B'")
    assert verifier.check(conn, {"A", "B"}) == []


def test_new_entry_without_its_balance_is_drift(conn) -> None:
    _accounts(conn)
    verifier = BalanceVerifier()
    assert verifier.check(conn, {"A", "C"}) == []
    conn.execute(
        """INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id, amount,
               currency_code, credit_amount, credit_currency_code, asset_type, transaction_type,
               reference_id, timestamp_utc, content_fingerprint)
           VALUES ('L', 'A', 'C', 7, 'EUR', 7, 'EUR', 'fiat', 'transfer', 'orphan', now(), 'x')"""
    )
    drift = {
        d.account_id: (d.expected_balance, d.actual_balance)
        for d in verifier.check(conn, {"A", "C"})
    }
    assert drift == {"A": (Decimal("7"), Decimal("0")), "C": (Decimal("-7"), Decimal("0"))}


def test_a_late_commit_below_the_verified_id_is_no_false_alarm(ledger_db) -> None:
    """A concurrent writer takes an id for A and B, we verify A and B past it (another entry, on
    C and D, committed a higher id), then it commits its entry and balances: the incremental sum
    misses its entry, and the full re-check clears the accounts."""
    with ledger_db.connection(autocommit=True) as conn:
        _accounts(conn)
        verifier = BalanceVerifier()
        assert verifier.check(conn, {"A", "B"}) == []
        with ledger_db.connection() as late:
            _post(late, "A", "B", "3", "late")  # open transaction: holds the lower id
            _post(conn, "C", "D", "4", "early")  # commits a higher id
            assert verifier.check(conn, {"A", "B"}) == []  # verified through "early"'s id
            late.commit()
        assert verifier.check(conn, {"A", "B"}) == []
        assert verifier.full_checks == 4  # 2 first checks + 2 re-checks after the late commit
        balance = conn.execute("SELECT balance FROM bank_accounts WHERE id = 'A'").fetchone()[0]
        assert balance == Decimal("3")


def test_one_verifier_is_safe_across_threads(ledger_db) -> None:
    with ledger_db.connection(autocommit=True) as conn:
        _accounts(conn)
    verifier = BalanceVerifier()
    failures: list[object] = []

    def worker(n: int) -> None:
        with ledger_db.connection(autocommit=True) as conn:
            for i in range(20):
                with conn.transaction():
                    conn.execute("SELECT id FROM bank_accounts ORDER BY id FOR UPDATE")
                    _post(conn, ACCOUNTS[n % 4], ACCOUNTS[(n + 1) % 4], "1.5", f"t{n}-{i}")
                if drift := verifier.check(conn, set(ACCOUNTS)):
                    failures.append(drift)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
