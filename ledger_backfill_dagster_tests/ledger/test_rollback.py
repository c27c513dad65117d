"""Rollback job: one partition undone before the balance constraints (delete + restore) and after
(reversals, or the maintenance procedure on request) leaves every other partition's entries and
every balance exactly as if it had never been backfilled; it can then be backfilled again to the
same final state. Real backfills, real Dagster runs, real PostgreSQL."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.ledger.rollback import RollbackRefused, RollbackScope, rollback
from ledger_backfill_dagster_tests.support import cli
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

DAY1, DAY2, DAY3 = "2024-01-01", "2024-01-02", "2024-01-03"
ROLLBACK = "rollback_job"


@pytest.fixture
def backfill_source(tmp_path: Path, backfill_env: dict[str, str], monkeypatch) -> None:
    entries, accounts = write_deposit_dataset(tmp_path / "data", days=3, per_day=40)
    use_source_files(monkeypatch, entries, accounts, BATCH_SIZE="16")


def succeeded(result: dg.ExecuteInProcessResult) -> dg.ExecuteInProcessResult:
    assert result.success, [
        e.event_specific_data.error.message
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    ]
    assert all(check_evaluations(result).values()), check_evaluations(result)
    return result


def source_id(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT DISTINCT backfill_source_id FROM ledger_entries").fetchone()[0]


def entries_of(conn: psycopg.Connection, partitions: tuple[str, ...]) -> list[tuple]:
    return conn.execute(
        "SELECT ledger_id, reference_id, amount, credit_amount, debit_account_id,"
        " credit_account_id, content_fingerprint, backfill_run_id FROM ledger_entries"
        " WHERE backfill_partition = ANY(%s) ORDER BY ledger_id, reference_id",
        (list(partitions),),
    ).fetchall()


def checkpoints(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT partition_key, status, total_processed, total_successful, total_duplicates,"
        " total_rejected FROM ledger_backfill_checkpoints ORDER BY partition_key"
    ).fetchall()


def audit_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT action, dry_run, details ->> 'method' FROM ledger_backfill_audit_log ORDER BY id"
    ).fetchall()


def state(database_url: str) -> dict:
    """Everything the acceptance compares: entries, balances, outbox, held rows, checkpoints."""
    with psycopg.connect(database_url) as conn:
        return {**ledger_snapshot(conn), "checkpoints": checkpoints(conn)}


def balances_of(database_url: str) -> dict[str, Decimal]:
    with psycopg.connect(database_url) as conn:
        return balances(conn)


def without_day2_then_with(backfill: BackfillRunner, database_url: str) -> tuple[dict, dict]:
    """Backfill days 1 and 3 (the ledger that never had day 2), then day 2; the state of both."""
    succeeded(backfill(DAY1))
    succeeded(backfill(DAY3))
    never = state(database_url)
    succeeded(backfill(DAY2))
    full = state(database_url)
    assert full["balances"] != never["balances"]
    with psycopg.connect(database_url) as conn:
        fx = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE backfill_partition = %s"
            " AND credit_amount <> amount",
            (DAY2,),
        ).fetchone()[0]
    assert fx == 10  # FX entries are part of what gets undone (credit_amount <> amount)
    return never, full


def test_rollback_before_constraints_deletes_restores_and_rebackfills(
    backfill: BackfillRunner, database_url: str
) -> None:
    never, full = without_day2_then_with(backfill, database_url)
    never_balances = {a: b for a, b, _, _ in never["balances"]}
    full_balances = {a: b for a, b, _, _ in full["balances"]}
    with psycopg.connect(database_url) as conn:
        sid = source_id(conn)
        never_others = entries_of(conn, (DAY1, DAY3))
    config = {"source_id": sid, "partition_start": DAY2}

    dry = run_maintenance_job(ROLLBACK, database_url, config, raise_on_error=True)
    plan = op_metadata(dry)
    assert plan["dry_run"] is True and plan["method"] == "delete"
    assert plan["entries_undone"] == 40  # the day's 40 entries (its duplicate and reject held)
    assert state(database_url) == full  # a dry run changes nothing
    with psycopg.connect(database_url) as conn:
        [details] = conn.execute(
            "SELECT details FROM ledger_backfill_audit_log WHERE dry_run"
        ).fetchone()
    # The dry run's per-account deltas are exactly what rolling back changes.
    planned = {d["account_id"]: Decimal(d["delta"]) for d in details["account_deltas"]}
    assert planned == {
        a: never_balances[a] - full_balances[a]
        for a in full_balances
        if never_balances[a] != full_balances[a]
    }

    applied = run_maintenance_job(
        ROLLBACK, database_url, {**config, "dry_run": False, "reason": "bad day-2 export"}
    )
    assert applied.success and op_metadata(applied)["entries_undone"] == 40
    assert state(database_url) == never  # entries, balances, outbox, held rows, checkpoints
    with psycopg.connect(database_url) as conn:
        assert entries_of(conn, (DAY1, DAY3)) == never_others
        assert_ledger_invariants(conn)
        assert audit_rows(conn) == [("ROLLBACK", True, "delete"), ("ROLLBACK", False, "delete")]

    succeeded(backfill(DAY2))  # the partition backfills again, to the same final state
    assert state(database_url) == full
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)


def test_rollback_after_constraints_posts_reversals_and_rebackfill_reapplies(
    backfill: BackfillRunner, database_url: str
) -> None:
    never, full = without_day2_then_with(backfill, database_url)
    assert run_maintenance_job("apply_balance_constraints_job", database_url, {}).success
    with psycopg.connect(database_url) as conn:
        sid = source_id(conn)
        never_others = entries_of(conn, (DAY1, DAY3))
        conn.execute(  # delivered already: a reversal is still allowed (it is sent too)
            "UPDATE dual_ledger_outbox SET status = 'SENT', sent_at = now() WHERE ledger_entry_id"
            " IN (SELECT id FROM ledger_entries WHERE backfill_partition = %s LIMIT 3)",
            (DAY2,),
        )
    config = {"source_id": sid, "partition_start": DAY2, "dry_run": False, "reason": "undo day 2"}

    applied = run_maintenance_job(ROLLBACK, database_url, config)
    assert applied.success and op_metadata(applied)["method"] == "reversal"
    after = state(database_url)
    assert after["balances"] == never["balances"]
    assert after["checkpoints"] == never["checkpoints"]  # day 2 can be backfilled again
    with psycopg.connect(database_url) as conn:
        assert entries_of(conn, (DAY1, DAY3)) == never_others
        reversals = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE reference_id LIKE 'REVERSAL-MASTER-DEP-%')"
            " FROM ledger_entries WHERE backfill_source_type = 'REVERSAL'"
        ).fetchone()
        assert reversals == (40, 40)
        originals = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE backfill_partition = %s", (DAY2,)
        ).fetchone()[0]
        assert originals == 40  # append-only: the originals stay, reversed
        assert_ledger_invariants(conn)  # every reversal has its (PENDING) outbox row too

    succeeded(backfill(DAY2))  # re-applies day 2 by reversing its reversals
    again = state(database_url)
    assert again["balances"] == full["balances"]
    assert again["checkpoints"] == full["checkpoints"]
    assert (again["duplicates"], again["rejects"]) == (full["duplicates"], full["rejects"])
    assert len(again["entries"]) == len(full["entries"]) + 80
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)

    # A second cycle follows the chain: rolled back again, balances are as without day 2 again.
    assert run_maintenance_job(ROLLBACK, database_url, config).success
    assert state(database_url)["balances"] == never["balances"]
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)


def test_maintenance_rollback_by_run_refuses_sent_rows_unless_forced(
    backfill: BackfillRunner, database_url: str
) -> None:
    succeeded(backfill(DAY1))
    never = state(database_url)
    day2_run = succeeded(backfill(DAY2)).run_id
    full = state(database_url)
    assert run_maintenance_job("apply_balance_constraints_job", database_url, {}).success
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE dual_ledger_outbox SET status = 'SENT' WHERE ledger_entry_id ="
            " (SELECT min(id) FROM ledger_entries WHERE backfill_partition = %s)",
            (DAY2,),
        )
    config = {
        "backfill_run_id": day2_run,
        "method": "maintenance",
        "dry_run": False,
        "reason": "maintenance window",
    }
    refused = run_maintenance_job(ROLLBACK, database_url, config)
    assert not refused.success
    assert state(database_url) == full
    with psycopg.connect(database_url) as conn:
        assert audit_rows(conn)[-1][0] == "ROLLBACK_REFUSED"
    forced = run_maintenance_job(ROLLBACK, database_url, {**config, "force": True})
    assert forced.success
    assert "rejected by bank_accounts_" in op_metadata(forced)["summary"]
    assert state(database_url) == never
    with psycopg.connect(database_url) as conn:
        constraints = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'bank_accounts'::regclass"
            " AND contype = 'c' AND convalidated AND strpos(conname, 'balance') > 0"
        ).fetchone()[0]
        assert constraints == 3  # lifted, re-applied and re-validated in the same transaction
    succeeded(backfill(DAY2))
    assert state(database_url) == full


def test_whole_source_rollback_takes_its_state_and_resets_dependents(
    conn: psycopg.Connection, database_url: str
) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('A', 'USD', TRUE), ('B', 'USD', TRUE), ('E', 'EUR', TRUE)"
    )

    def post(debit, credit, amount, ref, source, day, fx=None) -> int:
        return conn.execute(
            "SELECT post_ledger_entry('MASTER', %s, %s, %s::NUMERIC, 'USD', 'fiat', 'T', %s,"
            " %s::NUMERIC, p_backfill_source_id => %s, p_backfill_source_type => 'CSV',"
            " p_backfill_partition => %s, p_backfill_run_id => 'r')",
            (debit, credit, amount, ref, fx, source, day),
        ).fetchone()[0]

    shared = post("A", "B", "10.00", "R1", "src1", DAY1)
    post("A", "E", "3.33", "R2", "src1", DAY1, fx="0.9")  # credits E 3.00 EUR (rounded)
    post("B", "A", "1.50", "R3", "src1", DAY2)
    post("B", "A", "7.00", "R4", "src2", DAY1)
    conn.execute(
        "INSERT INTO ledger_backfill_checkpoints (source_id, source_type, partition_key, status)"
        " VALUES ('src1', 'CSV', %s, 'COMPLETED'), ('src1', 'CSV', %s, 'COMPLETED'),"
        " ('src2', 'CSV', %s, 'COMPLETED')",
        (DAY1, DAY2, DAY1),
    )
    conn.execute(
        "INSERT INTO ledger_backfill_rejects (source_id, source_type, partition_key,"
        " source_row_id, stage, reasons) VALUES ('src1', 'CSV', NULL, 90, 'extract', '{x}'),"
        " ('src1', 'CSV', %s, 91, 'validate', '{x}'), ('src2', 'CSV', %s, 92, 'validate', '{x}')",
        (DAY1, DAY1),
    )
    conn.execute(  # src2 skipped a row as a duplicate of src1's R1
        "INSERT INTO ledger_backfill_duplicates (source_id, partition_key, source_row_id,"
        " ledger_id, reference_id, existing_entry_id) VALUES ('src2', %s, 5, 'MASTER', 'R1', %s)",
        (DAY1, shared),
    )
    result = run_maintenance_job(
        ROLLBACK, database_url, {"source_id": "src1", "dry_run": False, "reason": "wrong file"}
    )
    assert result.success
    assert balances(conn) == {"A": Decimal("-7.00"), "B": Decimal("7.00"), "E": Decimal("0.00")}
    assert conn.execute("SELECT reference_id FROM ledger_entries").fetchall() == [("R4",)]
    assert conn.execute("SELECT count(*) FROM dual_ledger_outbox").fetchone()[0] == 1
    rejects = conn.execute("SELECT source_id FROM ledger_backfill_rejects").fetchall()
    assert rejects == [("src2",)]  # src1's, with and without a partition, are gone
    assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 0
    # src2's day 1 held a row that was a duplicate only because of src1: it must be redone.
    assert conn.execute("SELECT count(*) FROM ledger_backfill_checkpoints").fetchone()[0] == 0
    [details] = conn.execute(
        "SELECT details FROM ledger_backfill_audit_log WHERE action = 'ROLLBACK'"
    ).fetchone()
    assert details["entries_undone"] == 3
    assert details["dependent_partitions"] == [
        {"source_id": "src2", "source_type": "CSV", "partition_key": DAY1}
    ]
    assert details["deltas_by_currency"] == {"EUR": "3.00", "USD": "-3.33"}
    assert_ledger_invariants(conn)


def test_scope_and_method_are_refused_when_unsafe(conn: psycopg.Connection) -> None:
    with pytest.raises(RollbackRefused, match="never scoped by source type"):
        rollback(conn, RollbackScope(source_type="CSV"))
    with pytest.raises(RollbackRefused, match="not YYYY-MM-DD"):
        rollback(conn, RollbackScope(source_id="s", first_partition="BACKFILL-%"))
    with pytest.raises(RollbackRefused, match="a reason is required"):
        rollback(conn, RollbackScope(source_id="s"), dry_run=False)
    conn.execute(
        "INSERT INTO ledger_schema_migrations (version, name, checksum) VALUES ('004', 'x', 'x')"
    )
    with pytest.raises(RollbackRefused, match="append-only"):
        rollback(conn, RollbackScope(source_id="s"), method="delete", reason="r", dry_run=False)
    refusals = conn.execute(
        "SELECT count(*) FROM ledger_backfill_audit_log WHERE action = 'ROLLBACK_REFUSED'"
    ).fetchone()[0]
    assert refusals == 4


def test_rollback_job_runs_from_the_command_line(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    conn.execute(
        "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES"
        " ('A', 'USD', TRUE), ('B', 'USD', TRUE)"
    )
    conn.execute(
        "SELECT post_ledger_entry('MASTER', 'A', 'B', 5.25, 'USD', 'fiat', 'T', 'R1',"
        " p_backfill_source_id => 'src', p_backfill_source_type => 'CSV',"
        " p_backfill_partition => '2024-01-02', p_backfill_run_id => 'run-1')"
    )
    config = tmp_path / "rollback.yaml"
    config.write_text(
        "ops:\n  rollback_backfill:\n    config:\n      source_id: src\n"
        '      partition_start: "2024-01-02"\n'
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    done = cli.run(
        cli.job_command(ROLLBACK, "-c", str(config)),
        {**os.environ, "DATABASE_URL": database_url, "DAGSTER_HOME": str(home)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1  # dry run
    action, dry_run, details = conn.execute(
        "SELECT action, dry_run, details FROM ledger_backfill_audit_log"
    ).fetchone()
    assert (action, dry_run) == ("ROLLBACK", True)
    assert details["entries_undone"] == 1
    assert details["account_deltas"] == [
        {
            "account_id": "A",
            "currency_code": "USD",
            "balance_before": "5.25",
            "delta": "-5.25",
            "balance_after": "0.00",
        },
        {
            "account_id": "B",
            "currency_code": "USD",
            "balance_before": "-5.25",
            "delta": "5.25",
            "balance_after": "0.00",
        },
    ]
