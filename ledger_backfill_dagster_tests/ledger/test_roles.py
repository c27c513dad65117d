"""Least-privilege roles (sql/roles.sql): the backfill role posts but cannot delete entries; only
the rollback role can; the reader only reads. Checked with SET ROLE and with a real backfill run
as a login member of the backfill role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ledger_backfill_dagster import cli
from ledger_backfill_dagster.ledger.roles import RoleNames, apply_roles
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    materialize_range,
    use_source_files,
)
from ledger_backfill_dagster_tests.support.pg_roles import drop_roles, login_role, unique_prefix

DENIED = psycopg.errors.InsufficientPrivilege


@pytest.fixture
def roles(database_url: str, pg_admin_url: str, ledger_db) -> Iterator[RoleNames]:
    names = RoleNames.with_prefix(unique_prefix())
    try:
        with psycopg.connect(database_url) as conn:
            apply_roles(conn, names)
            apply_roles(conn, names)  # idempotent: a second run changes nothing and fails not
        yield names
    finally:
        drop_roles(database_url, pg_admin_url, [names.reader, names.backfill, names.rollback])


def _as(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def _seed_entry(conn: psycopg.Connection) -> None:
    """One posted entry, through the seed's atomic posting function (as the owner)."""
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('A1', 'USD', true), ('A2', 'USD', true)"
    )
    conn.execute(
        "INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id, amount,"
        " currency_code, credit_amount, credit_currency_code, asset_type, transaction_type,"
        " reference_id, timestamp_utc, content_fingerprint)"
        " VALUES ('MASTER', 'A1', 'A2', 10, 'USD', 10, 'USD', 'FIAT', 'TRANSFER', 'R1', now(), 'x')"
    )
    conn.execute(
        "INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)"
        " SELECT id, ledger_id, reference_id FROM ledger_entries"
    )


def _denied(conn: psycopg.Connection, statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement)
    except DENIED:
        return True
    return False


def _allowed(conn: psycopg.Connection, statement: str) -> int:
    """Runs the statement and rolls it back; returns the rows it touched."""
    with conn.transaction(force_rollback=True):
        return conn.execute(statement).rowcount


def test_backfill_role_cannot_delete_entries_rollback_role_can(
    roles: RoleNames, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed_entry(conn)

        _as(conn, roles.backfill)
        assert _allowed(conn, "UPDATE bank_accounts SET balance = balance + 1 WHERE id = 'A1'") == 1
        assert (
            _allowed(
                conn,
                "INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id,"
                " amount, currency_code, credit_amount, credit_currency_code, asset_type,"
                " transaction_type, reference_id, timestamp_utc, content_fingerprint) VALUES"
                " ('MASTER', 'A2', 'A1', 5, 'USD', 5, 'USD', 'FIAT', 'TRANSFER', 'R2', now(), 'y')",
            )
            == 1
        )
        assert _allowed(conn, "SELECT * FROM ledger_entries") == 1
        assert _denied(conn, "DELETE FROM ledger_entries")
        assert _denied(conn, "UPDATE ledger_entries SET amount = 1")
        assert _denied(conn, "TRUNCATE ledger_entries")
        assert _denied(conn, "DELETE FROM dual_ledger_outbox")
        assert _denied(conn, "DELETE FROM ledger_backfill_audit_log")
        assert _denied(conn, "CREATE TABLE sneaky (id int)")
        assert _denied(conn, "ALTER TABLE bank_accounts ADD CONSTRAINT c CHECK (balance >= 0)")
        conn.execute("RESET ROLE")

        _as(conn, roles.rollback)
        assert _allowed(conn, "DELETE FROM dual_ledger_outbox") == 1
        with conn.transaction(force_rollback=True):
            assert conn.execute("DELETE FROM dual_ledger_outbox").rowcount == 1
            assert conn.execute("DELETE FROM ledger_entries").rowcount == 1
            conn.execute("UPDATE bank_accounts SET balance = 0")
        assert _denied(conn, "TRUNCATE ledger_entries")
        assert _denied(conn, "UPDATE ledger_entries SET amount = 1")
        conn.execute("RESET ROLE")

        _as(conn, roles.reader)
        assert _allowed(conn, "SELECT * FROM ledger_backfill_checkpoints") == 0
        assert _denied(conn, "UPDATE bank_accounts SET balance = 0")
        assert _denied(conn, "INSERT INTO ledger_backfill_pause_requests (source_id) VALUES ('x')")
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1


def test_real_backfill_runs_as_backfill_login(
    roles: RoleNames,
    database_url: str,
    pg_admin_url: str,
    tmp_path: Path,
    backfill_env,
    monkeypatch,
    capsys,
) -> None:
    data = generate(tmp_path / "data", entries=800, days=2, accounts=15, start=date(2024, 1, 1))
    use_source_files(monkeypatch, data.entries_file, data.accounts_file)
    user = roles.backfill.replace("ledger_backfill", "svc")
    with login_role(database_url, pg_admin_url, user, "pw-backfill-1", roles.backfill) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        assert materialize_range("2024-01-01", "2024-01-02").success
        # pause and resume are the backfill role's to use, too
        assert cli.main(["pause"]) == 0
        assert cli.main(["resume"]) == 0
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == user
            assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 800
            assert _denied(conn, "DELETE FROM ledger_entries")
    reader = roles.reader.replace("ledger_reader", "watch")
    with login_role(database_url, pg_admin_url, reader, "pw-reader-1", roles.reader) as url:
        monkeypatch.setenv("DATABASE_URL", url)
        capsys.readouterr()
        assert cli.main(["status", "--json"]) == 0
        assert '"COMPLETED": 2' in capsys.readouterr().out
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)


def test_roles_command(database_url: str, pg_admin_url: str, backfill_env, capsys) -> None:
    prefix = unique_prefix()
    try:
        assert cli.main(["roles", "--prefix", prefix]) == 0
        out = capsys.readouterr().out
        assert f"{prefix}ledger_backfill" in out
        with psycopg.connect(database_url) as conn:
            granted = conn.execute(
                "SELECT privilege_type FROM information_schema.role_table_grants"
                " WHERE grantee = %s AND table_name = 'ledger_entries' ORDER BY 1",
                (f"{prefix}ledger_rollback",),
            ).fetchall()
        assert [g for (g,) in granted] == ["DELETE", "INSERT", "SELECT"]
    finally:
        drop_roles(
            database_url,
            pg_admin_url,
            [f"{prefix}ledger_reader", f"{prefix}ledger_backfill", f"{prefix}ledger_rollback"],
        )


def test_rollback_job_needs_the_rollback_role(
    roles: RoleNames,
    database_url: str,
    pg_admin_url: str,
    tmp_path: Path,
    backfill_env,
    monkeypatch,
) -> None:
    """The real rollback job: refused with the backfill role's credentials, done with the
    rollback role's."""
    import dagster as dg

    from ledger_backfill_dagster.definitions import build_definitions
    from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

    data = generate(tmp_path / "data", entries=600, days=2, accounts=12, start=date(2024, 1, 1))
    use_source_files(monkeypatch, data.entries_file, data.accounts_file)
    assert materialize_range("2024-01-01", "2024-01-02").success
    run_config = {
        "ops": {
            "rollback_backfill": {
                "config": {
                    "source_id": str(data.entries_file),
                    "partition_start": "2024-01-02",
                    "method": "delete",
                    "dry_run": False,
                    "reason": "test: least privilege",
                }
            }
        }
    }

    def rollback_as(url: str) -> dg.ExecuteInProcessResult:
        job = build_definitions({"ledger_db": LedgerDatabase(database_url=url)}).resolve_job_def(
            "rollback_job"
        )
        with dg.instance_for_test() as instance:
            return job.execute_in_process(
                run_config=run_config, instance=instance, raise_on_error=False
            )

    def count() -> int:
        with psycopg.connect(database_url) as conn:
            return conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]

    prefix = roles.backfill.removesuffix("ledger_backfill")
    with login_role(database_url, pg_admin_url, f"{prefix}poster", "pw-b", roles.backfill) as url:
        refused = rollback_as(url)
    assert not refused.success
    failures = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "permission denied" in str(failures[0].event_specific_data.error)
    assert count() == 600
    with login_role(database_url, pg_admin_url, f"{prefix}undoer", "pw-r", roles.rollback) as url:
        done = rollback_as(url)
    assert done.success
    assert count() == 300
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)
