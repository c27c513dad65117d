"""Balance constraints job (the seed's step 5): pre-validation refuses while a balance would break
them, naming the accounts (allow_negative ones exempt); after a fix they apply, are recorded as
migration 004, and the seed's deliberate bad update fails. Real PostgreSQL, real Dagster runs."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest
from psycopg import errors as pgerrors

from ledger_backfill_dagster.ledger.constraints import CONSTRAINT_NAMES
from ledger_backfill_dagster_tests.support.helpers import op_metadata, run_maintenance_job

JOB = "apply_balance_constraints_job"


def post(conn: psycopg.Connection, debit: str, credit: str, amount: str, reference: str) -> None:
    conn.execute(
        "SELECT post_ledger_entry('MASTER', %s, %s, %s::NUMERIC, 'USD', 'fiat', 'TRANSFER', %s)",
        (debit, credit, amount, reference),
    )


@pytest.fixture
def accounts(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative, account_type) VALUES"
        " ('CLR-USD', 'USD', TRUE, 'clearing'), ('CUST-A', 'USD', FALSE, 'customer'),"
        " ('CUST-B', 'USD', FALSE, 'customer')"
    )
    post(conn, "CUST-A", "CLR-USD", "100.00", "R1")  # CUST-A +100, CLR -100 (exempt)
    post(conn, "CLR-USD", "CUST-B", "30.25", "R2")  # CUST-B -30.25: breaks the constraints
    return conn


def failure_description(result) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.event_specific_data.error.message


def installed(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'bank_accounts'::regclass AND contype = 'c'"
        " AND strpos(conname, 'balance') > 0"
    ).fetchall()
    return {r[0] for r in rows}


def audit_actions(conn: psycopg.Connection) -> list[tuple[str, bool]]:
    return conn.execute(
        "SELECT action, dry_run FROM ledger_backfill_audit_log ORDER BY id"
    ).fetchall()


def test_refuses_naming_the_accounts_then_applies_and_enforces(
    accounts: psycopg.Connection, database_url: str
) -> None:
    conn = accounts
    refused = run_maintenance_job(JOB, database_url, {})
    assert not refused.success
    message = failure_description(refused)
    assert "CUST-B (USD): available_balance < 0" in message and "-30.25" in message
    assert "CLR-USD" not in message  # allow_negative accounts are exempt
    assert installed(conn) == set()
    assert (
        conn.execute(
            "SELECT count(*) FROM ledger_schema_migrations WHERE version = '004'"
        ).fetchone()[0]
        == 0
    )

    post(conn, "CUST-B", "CLR-USD", "50.00", "R3")  # the fix: CUST-B at 19.75
    dry = run_maintenance_job(JOB, database_url, {"dry_run": True})
    assert dry.success and op_metadata(dry)["applied"] is False
    assert installed(conn) == set()

    applied = run_maintenance_job(JOB, database_url, {})
    assert applied.success
    meta = op_metadata(applied)
    assert meta["applied"] is True
    assert "was rejected by bank_accounts_" in meta["verification"]
    assert installed(conn) == set(CONSTRAINT_NAMES)
    name, checksum = conn.execute(
        "SELECT name, checksum FROM ledger_schema_migrations WHERE version = '004'"
    ).fetchone()
    assert name == "004_balance_constraints.sql" and len(checksum) == 64
    assert audit_actions(conn) == [
        ("APPLY_BALANCE_CONSTRAINTS_REFUSED", False),
        ("APPLY_BALANCE_CONSTRAINTS", True),
        ("APPLY_BALANCE_CONSTRAINTS", False),
    ]

    # Enforced: the seed's bad update fails, and so does a posting that overdraws a customer.
    with pytest.raises(pgerrors.CheckViolation):
        conn.execute("UPDATE bank_accounts SET available_balance = -1 WHERE id = 'CUST-A'")
    with pytest.raises(pgerrors.CheckViolation):
        post(conn, "CLR-USD", "CUST-A", "100.01", "R4")
    post(conn, "CLR-USD", "CUST-A", "100.00", "R5")  # down to exactly zero is fine
    post(conn, "CLR-USD", "CUST-B", "19.75", "R6")
    balances = dict(conn.execute("SELECT id, balance FROM bank_accounts").fetchall())
    assert balances == {
        "CUST-A": Decimal("0.00"),
        "CUST-B": Decimal("0.00"),
        "CLR-USD": Decimal("0.00"),
    }

    again = run_maintenance_job(JOB, database_url, {})
    assert again.success and op_metadata(again)["already_applied_before"] is True


def test_refuses_while_a_balance_differs_from_its_entries(
    accounts: psycopg.Connection, database_url: str
) -> None:
    conn = accounts
    post(conn, "CUST-B", "CLR-USD", "50.00", "R3")
    conn.execute(
        "UPDATE bank_accounts SET balance = balance + 1, available_balance = available_balance + 1"
        " WHERE id = 'CUST-A'"
    )
    refused = run_maintenance_job(JOB, database_url, {})
    assert not refused.success
    assert "CUST-A: stored 101.00, entries sum to 100.00" in failure_description(refused)
    assert installed(conn) == set()
    lenient = run_maintenance_job(JOB, database_url, {"require_reconciled": False})
    assert lenient.success and installed(conn) == set(CONSTRAINT_NAMES)


def test_verifies_with_a_probe_when_no_account_may_not_go_negative(
    conn: psycopg.Connection, database_url: str
) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES ('X', 'USD', TRUE)"
    )
    result = run_maintenance_job(JOB, database_url, {})
    assert result.success
    assert "probe account" in op_metadata(result)["verification"]
    assert conn.execute("SELECT count(*) FROM bank_accounts").fetchone()[0] == 1
