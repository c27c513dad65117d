"""The ledger schema, its migration runner and the seed's atomic posting function."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from ledger_backfill_dagster.ledger.migrations import apply_migrations


def test_migrations_are_recorded_idempotent_and_defer_constraints(conn: psycopg.Connection) -> None:
    versions = [
        v for (v,) in conn.execute("SELECT version FROM ledger_schema_migrations ORDER BY 1")
    ]
    assert versions == [
        "001",
        "002",
        "003",
        "005",
        "006",
        "007",
        "008",
        "009",
    ]  # 004 (balance constraints) waits for step 5
    assert apply_migrations(conn) == []
    constraints = conn.execute(
        "SELECT constraint_name FROM information_schema.table_constraints"
        " WHERE table_name = 'ledger_entries' AND constraint_name LIKE '%reference%'"
    ).fetchall()
    assert constraints  # the seed's 1.2 schema check finds the idempotency constraint


def _accounts(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('A', 'USD', false), ('B', 'USD', true), ('C', 'EUR', false), ('J', 'JPY', true)"
    )


def test_post_ledger_entry_is_atomic_and_idempotent(conn: psycopg.Connection) -> None:
    _accounts(conn)
    entry = conn.execute(
        "SELECT post_ledger_entry('MASTER', 'A', 'B', 10.50, 'USD', 'fiat', 'TRANSFER', 'R1', NULL,"
        " '{\"k\": 1}'::jsonb)"
    ).fetchone()[0]
    assert entry > 0
    assert conn.execute("SELECT balance FROM bank_accounts WHERE id = 'A'").fetchone()[
        0
    ] == Decimal("10.50")
    assert conn.execute("SELECT balance FROM bank_accounts WHERE id = 'B'").fetchone()[
        0
    ] == Decimal("-10.50")
    with pytest.raises(psycopg.errors.UniqueViolation):  # the seed's callers expect 23505
        conn.execute(
            "SELECT post_ledger_entry('MASTER', 'A', 'B', 10.50, 'USD', 'fiat', 'TRANSFER', 'R1')"
        )
    assert conn.execute("SELECT count(*) FROM dual_ledger_outbox").fetchone()[0] == 1
    assert conn.execute("SELECT balance FROM bank_accounts WHERE id = 'A'").fetchone()[
        0
    ] == Decimal("10.50")


def test_post_ledger_entry_converts_currency_half_even(conn: psycopg.Connection) -> None:
    _accounts(conn)
    conn.execute(
        "SELECT post_ledger_entry('MASTER', 'C', 'J', 1.25, 'EUR', 'fiat', 'FX', 'R2', 162.5)"
    )
    # 1.25 × 162.5 = 203.125 → JPY has 0 minor units → 203 (half-even)
    row = conn.execute("SELECT credit_amount, credit_currency_code FROM ledger_entries").fetchone()
    assert row == (Decimal("203"), "JPY")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("SELECT post_ledger_entry('MASTER', 'C', 'J', 1, 'EUR', 'fiat', 'FX', 'R3')")


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        ("2.5", 0, "2"),
        ("3.5", 0, "4"),
        ("1.005", 2, "1.00"),
        ("1.015", 2, "1.02"),
        ("1.0151", 2, "1.02"),
    ],
)
def test_round_half_even_matches_python(
    conn: psycopg.Connection, value: str, places: int, expected: str
) -> None:
    got = conn.execute("SELECT round_half_even(%s::numeric, %s)", (value, places)).fetchone()[0]
    assert got == Decimal(expected)


def test_account_with_entries_cannot_be_deleted(conn: psycopg.Connection) -> None:
    _accounts(conn)
    conn.execute("SELECT post_ledger_entry('MASTER', 'A', 'B', 1, 'USD', 'fiat', 'T', 'R9')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("DELETE FROM bank_accounts WHERE id = 'B'")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(
            "SELECT post_ledger_entry('MASTER', 'A', 'NOPE', 1, 'USD', 'fiat', 'T', 'R10')"
        )
    conn.execute("DELETE FROM bank_accounts WHERE id = 'C'")  # no entries: allowed
