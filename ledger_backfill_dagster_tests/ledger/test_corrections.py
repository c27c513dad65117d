"""Corrections job (scenario 3): a broken ledger is brought back to consistency through posted,
audited correction entries against a suspense account; dry run first by default."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster_tests.support.helpers import (
    BackfillRunner,
    assert_ledger_invariants,
    balances,
    check_evaluations,
    ledger_snapshot,
    op_metadata,
    run_maintenance_job,
    use_source_files,
    write_deposit_dataset,
)

JOB = "correct_balances_job"
NUDGES = {  # account: amount added to its stored balance (and available balance) by hand
    "CUST-USD-0": Decimal("12.34"),
    "CUST-EUR-1": Decimal("-0.01"),
    "CLR-USD": Decimal("1000.005"),  # finer than a cent: corrected exactly all the same
}


@pytest.fixture
def backfill_source(tmp_path: Path, backfill_env, monkeypatch) -> None:
    use_source_files(monkeypatch, *write_deposit_dataset(tmp_path / "data", days=2, per_day=40))


def nudge(conn: psycopg.Connection, account: str, amount: Decimal) -> None:
    conn.execute(
        "UPDATE bank_accounts SET balance = balance + %(d)s,"
        " available_balance = available_balance + %(d)s WHERE id = %(a)s",
        {"d": amount, "a": account},
    )


def audit(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT action, dry_run, scope ->> 'account_id', run_id, reason"
        " FROM ledger_backfill_audit_log ORDER BY id"
    ).fetchall()


def test_corrections_restore_consistency_through_posted_audited_entries(
    backfill: BackfillRunner, database_url: str
) -> None:
    assert backfill("2024-01-01", "2024-01-02").success
    with psycopg.connect(database_url, autocommit=True) as conn:
        for account, amount in NUDGES.items():
            nudge(conn, account, amount)
        broken = ledger_snapshot(conn)
        stored = balances(conn)

        dry = run_maintenance_job(JOB, database_url, {}, raise_on_error=True)
        meta = op_metadata(dry)
        assert meta["dry_run"] is True and meta["corrections"] == 3
        planned = {r.data["account_id"]: r.data for r in meta["corrections_table"].records}
        assert {a: Decimal(p["difference"]) for a, p in planned.items()} == NUDGES
        assert planned["CUST-USD-0"]["debit_account_id"] == "CUST-USD-0"  # entries must rise
        assert planned["CUST-EUR-1"]["credit_account_id"] == "CUST-EUR-1"  # entries must fall
        assert ledger_snapshot(conn) == broken  # nothing posted, no suspense account created
        assert [(a, d) for a, d, *_ in audit(conn)] == [("BALANCE_CORRECTION", True)] * 3 + [
            ("CREATE_SUSPENSE_ACCOUNT", True)
        ] * 2

        applied = run_maintenance_job(
            JOB, database_url, {"dry_run": False, "reason": "audit finding 42"}
        )
        assert applied.success
        assert_ledger_invariants(conn)  # every balance equals its entries again, books balance
        after = balances(conn)
        for account in NUDGES:  # the balances customers saw are not changed
            assert after[account] == stored[account]
        assert after["SUSPENSE-USD"] == -(NUDGES["CUST-USD-0"] + NUDGES["CLR-USD"])
        assert after["SUSPENSE-EUR"] == -NUDGES["CUST-EUR-1"]
        suspense = conn.execute(
            "SELECT id, allow_negative, account_type FROM bank_accounts"
            " WHERE id LIKE 'SUSPENSE-%' ORDER BY id"
        ).fetchall()
        assert suspense == [("SUSPENSE-EUR", True, "suspense"), ("SUSPENSE-USD", True, "suspense")]
        corrections = conn.execute(
            "SELECT e.reference_id, e.amount, e.transaction_type, e.backfill_source_type,"
            " e.backfill_run_id, o.status FROM ledger_entries e"
            " JOIN dual_ledger_outbox o ON o.ledger_entry_id = e.id"
            " WHERE e.transaction_type = 'CORRECTION' ORDER BY e.reference_id"
        ).fetchall()
        assert len(corrections) == 3
        assert sorted(c[1] for c in corrections) == sorted(abs(v) for v in NUDGES.values())
        assert {c[2:4] for c in corrections} == {("CORRECTION", "CORRECTION")}
        assert {c[4] for c in corrections} == {applied.run_id}
        assert {c[5] for c in corrections} == {"PENDING"}
        rows = [r for r in audit(conn) if not r[1]]
        assert [(r[0], r[2]) for r in rows if r[0] == "BALANCE_CORRECTION"] == sorted(
            ("BALANCE_CORRECTION", a) for a in NUDGES
        )
        assert all(r[3] == applied.run_id and "audit finding 42" in r[4] for r in rows[:3])
        assert any(
            "differs from the sum of its entries" in r[4] and "by 12.34 USD" in r[4] for r in rows
        )

    # The report and every ledger check pass again.
    report = backfill("2024-01-01", "2024-01-02", assets=[reconciliation_report.key])
    assert report.success and all(check_evaluations(report).values())
    again = run_maintenance_job(JOB, database_url, {"dry_run": False, "reason": "re-check"})
    assert op_metadata(again)["corrections"] == 0


def test_corrections_never_break_balance_constraints_on_the_way(
    conn: psycopg.Connection, database_url: str
) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('CLR', 'USD', TRUE), ('CUST', 'USD', FALSE), ('RICH', 'USD', FALSE)"
    )
    for debit, amount, ref in (("CUST", "100", "R1"), ("RICH", "50", "R2")):
        conn.execute(
            "SELECT post_ledger_entry('MASTER', %s, 'CLR', %s::NUMERIC, 'USD', 'fiat', 'T', %s)",
            (debit, amount, ref),
        )
    assert run_maintenance_job("apply_balance_constraints_job", database_url, {}).success
    nudge(conn, "CUST", Decimal("-100"))  # stored 0, entries 100: the entries must fall by 100
    nudge(conn, "RICH", Decimal("25"))  # stored 75, entries 50: the entries must rise by 25
    conn.execute("UPDATE bank_accounts SET reserved_balance = 1 WHERE id = 'CLR'")
    result = run_maintenance_job(JOB, database_url, {"dry_run": False, "reason": "test"})
    assert result.success
    assert op_metadata(result)["corrections"] == 2
    assert balances(conn) == {
        "CLR": Decimal("-150"),
        "CUST": Decimal("0"),
        "RICH": Decimal("75"),
        "SUSPENSE-USD": Decimal("75"),
    }
    inconsistent = op_metadata(result)["available_inconsistent"].records
    assert [r.data["account_id"] for r in inconsistent] == ["CLR"]  # reported, not "corrected"


def test_a_suspense_account_in_another_currency_is_refused(
    conn: psycopg.Connection, database_url: str
) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('SUSP', 'EUR', TRUE), ('A', 'USD', FALSE)"
    )
    nudge(conn, "A", Decimal("1"))
    result = run_maintenance_job(JOB, database_url, {"suspense_account_id": "SUSP"})
    assert not result.success
    assert balances(conn) == {"SUSP": Decimal("0"), "A": Decimal("1")}
