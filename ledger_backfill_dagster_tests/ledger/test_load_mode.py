"""LOAD_MODE (ledger/load_mode.py): auto loads an empty ledger as an initial load and a ledger
holding anything live; initial is refused where unsafe; an initial load keeps every unique index,
builds its secondary indexes again and validates every balance after the load, and reports it.

Real PostgreSQL, real in-process materializations. SIGKILL during the load and during the index
build: e2e/test_load_mode_faults.py."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.ledger import load_mode
from ledger_backfill_dagster.ledger.posting import LOAD_LOCK_KEY
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster_tests.support.fault_harness import ledger_backfill, wait_until
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    failure_text,
    materialize_range,
    use_source_files,
    write_deposit_dataset,
)

FIRST, LAST = "2024-01-01", "2024-01-06"
SECONDARY = {
    "idx_dual_ledger_outbox_reference",
    "idx_dual_ledger_outbox_status",
    "idx_ledger_entries_credit_id",
    "idx_ledger_entries_debit_id",
    "idx_ledger_entries_lineage",
    "idx_ledger_entries_unkeyed_row",
}
UNIQUE = {
    "ledger_entries_pkey",
    "ledger_entries_ledger_reference_key",
    "idx_ledger_entries_source_row_key",
    "dual_ledger_outbox_pkey",
    "dual_ledger_outbox_entry_key",
}


def indexes(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes"
        " WHERE tablename IN ('ledger_entries', 'dual_ledger_outbox')"
    ).fetchall()
    return {name for (name,) in rows}


def loads(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT source_id, requested_mode, mode, status, reason, balances_validated_at IS NOT NULL,"
        " accounts_with_drift FROM ledger_backfill_loads ORDER BY id"
    ).fetchall()


def posting_metadata(result) -> dict[str, object]:
    """posted_batches' metadata on its first partition: the run's (load mode, totals) under that
    day's own numbers."""
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "posted_batches"
    )
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


@pytest.fixture
def dataset(tmp_path: Path, backfill_env, monkeypatch) -> tuple[Path, Path]:
    entries, accounts = write_deposit_dataset(tmp_path / "data", days=6, per_day=40)
    use_source_files(monkeypatch, entries, accounts, BATCH_SIZE="50", BACKFILL_SOURCE_ID="dep")
    return entries, accounts


@pytest.fixture
def deposits(dataset: tuple[Path, Path]) -> Path:
    return dataset[0]


def test_auto_loads_an_empty_ledger_initially_then_posts_live(
    deposits: Path, conn: psycopg.Connection, monkeypatch
) -> None:
    result = materialize_range(FIRST, LAST)
    assert result.success
    meta = posting_metadata(result)
    assert meta["load_mode"] == "initial"
    assert meta["load_mode_reason"] == "the ledger was empty"
    assert meta["indexes_rebuilt"] == len(SECONDARY)
    assert meta["accounts_with_drift_after_load"] == 0
    # every index is back, the unique ones never left
    assert indexes(conn) >= SECONDARY | UNIQUE
    [row] = loads(conn)
    assert row == ("dep", "auto", "initial", "DONE", "the ledger was empty", True, 0)
    assert_ledger_invariants(conn)
    entries = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    # every source row accounted for: the reconciliation's blocking checks passed
    assert all(c.passed for c in result.get_asset_check_evaluations())

    # The ledger now holds entries: auto posts live, and a re-run posts nothing twice.
    monkeypatch.setenv("FORCE_REDO", "true")
    again = materialize_range(FIRST, LAST)
    assert again.success
    meta = posting_metadata(again)
    assert meta["load_mode"] == "live"
    assert "the ledger holds entries" in str(meta["load_mode_reason"])
    assert meta["posted"] == 0 and meta["already_posted"] > 0
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == entries
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert_ledger_invariants(conn)


def test_the_report_names_the_mode(
    deposits: Path, conn: psycopg.Connection, backfill_env: dict[str, str]
) -> None:
    assert materialize_range(FIRST, LAST).success
    [report] = (Path(backfill_env["LEDGER_BACKFILL_HOME"]) / "reports").rglob(f"{FIRST}_*.md")
    text = report.read_text()
    assert "## Load mode of this run (LOAD_MODE)" in text
    assert "| initial | auto | the ledger was empty | DONE |" in text


def test_declared_initial_over_another_sources_entries_is_refused_and_changes_nothing(
    tmp_path: Path, deposits: Path, conn: psycopg.Connection, monkeypatch
) -> None:
    monkeypatch.setenv("BACKFILL_SOURCE_ID", "other")
    assert materialize_range(FIRST, "2024-01-02").success
    before = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]

    monkeypatch.setenv("BACKFILL_SOURCE_ID", "dep")
    monkeypatch.setenv("FORCE_REDO", "true")
    monkeypatch.setenv("LOAD_MODE", "initial")
    result = materialize_range(FIRST, LAST, raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "LOAD_MODE=initial refused" in text and "source dep did not post" in text
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == before

    # auto over a ledger that holds entries: live, and it says why
    monkeypatch.setenv("LOAD_MODE", "auto")
    live = materialize_range(FIRST, LAST)
    assert live.success
    assert posting_metadata(live)["load_mode"] == "live"
    assert_ledger_invariants(conn)


def test_declared_initial_over_the_sources_own_entries_keeps_exactly_once(
    deposits: Path, conn: psycopg.Connection, monkeypatch
) -> None:
    """A maintenance-window re-load of the same source: duplicates and already-posted rows are
    recognised by the unique indexes the load keeps."""
    monkeypatch.setenv("LOAD_MODE", "live")
    assert materialize_range(FIRST, LAST).success
    after_all = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    conn.execute("DELETE FROM ledger_backfill_checkpoints")  # as if only three days were done
    assert materialize_range(FIRST, "2024-01-03").success
    monkeypatch.setenv("LOAD_MODE", "initial")
    monkeypatch.setenv("FORCE_REDO", "true")
    result = materialize_range(FIRST, LAST)
    assert result.success
    meta = posting_metadata(result)
    assert meta["load_mode"] == "initial"
    assert meta["load_mode_reason"] == "declared (LOAD_MODE=initial)"
    assert meta["already_posted"] > 0 and meta["posted"] == 0  # its first day: posted before
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == after_all
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert_ledger_invariants(conn)


def test_initial_is_refused_beside_a_writer_and_auto_then_posts_live(
    deposits: Path, conn: psycopg.Connection, database_url: str, monkeypatch
) -> None:
    with psycopg.connect(database_url) as writer:
        LedgerDatabase(database_url=database_url).migrate()
        writer.execute("LOCK TABLE ledger_entries IN ROW EXCLUSIVE MODE")  # a writer's lock
        monkeypatch.setenv("LOAD_MODE", "initial")
        result = materialize_range(FIRST, LAST, raise_on_error=False)
        assert not result.success
        assert "other sessions use the ledger: pid" in failure_text(result)
        assert indexes(conn) >= SECONDARY | UNIQUE

        monkeypatch.setenv("LOAD_MODE", "auto")
        live = materialize_range(FIRST, LAST)
        assert live.success
        assert posting_metadata(live)["load_mode"] == "live"
    assert_ledger_invariants(conn)


def test_initial_is_refused_while_a_live_posting_run_holds_its_sessions(
    deposits: Path, conn: psycopg.Connection, database_url: str, monkeypatch
) -> None:
    """A live run holds the load lock shared for as long as it has posting sessions, even
    between two transactions."""
    LedgerDatabase(database_url=database_url).migrate()
    with psycopg.connect(database_url, autocommit=True) as live_session:
        live_session.execute("SELECT pg_advisory_lock_shared(%s)", (LOAD_LOCK_KEY,))
        monkeypatch.setenv("LOAD_MODE", "initial")
        result = materialize_range(FIRST, LAST, raise_on_error=False)
        assert not result.success
        assert "other posting runs are active" in failure_text(result)
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0


def test_a_balance_moved_during_an_initial_load_fails_the_run_after_the_build(
    dataset: tuple[Path, Path], conn: psycopg.Connection, database_url: str
) -> None:
    """Initial mode checks every balance once, after the indexes are built: drift is found
    there, named, and the indexes are back all the same."""
    from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file

    LedgerDatabase(database_url=database_url).migrate()
    _, accounts = dataset
    load_accounts(conn, read_accounts_file(str(accounts)))
    conn.execute("UPDATE bank_accounts SET balance = balance + 0.01 WHERE id = 'FEE-USD'")
    result = materialize_range(FIRST, LAST, raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "(initial load)" in text and "FEE-USD" in text and "entries sum to" in text
    assert indexes(conn) >= SECONDARY | UNIQUE
    [row] = loads(conn)
    assert row[2:4] == ("initial", "DONE") and row[5:] == (True, 1)


def test_an_unfinished_load_is_finished_by_the_cli_or_the_next_run(
    deposits: Path, conn: psycopg.Connection, database_url: str, backfill_env: dict[str, str]
) -> None:
    """The control row alone (as a SIGKILL leaves it) is enough to build the indexes again."""
    db = LedgerDatabase(database_url=database_url)
    db.migrate()
    load = load_mode.begin(db.connect, "dep", "run-1", "auto")
    assert load.initial and not (indexes(conn) & SECONDARY)
    assert load.guard is not None
    load.guard.close()  # the process died: its lock goes with its session
    assert loads(conn)[0][3] == "LOADING"
    printed = ledger_backfill(backfill_env, "rebuild-indexes")  # the command, as a user runs it
    assert "built the indexes of the initial load of dep (run run-1)" in printed
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert loads(conn)[0][3] == "DONE"
    assert "every index is in place" in load_mode.rebuild_unfinished(db.connect)


def test_runs_of_the_same_source_join_a_running_load_others_wait_or_are_refused(
    deposits: Path, conn: psycopg.Connection, database_url: str
) -> None:
    db = LedgerDatabase(database_url=database_url)
    db.migrate()
    owner = load_mode.begin(db.connect, "dep", "run-1", "auto")
    try:
        joined = load_mode.begin(db.connect, "dep", "run-2", "auto")
        assert joined.initial and joined.joined_run == "run-1" and joined.guard is None
        other = load_mode.begin(db.connect, "other", "run-3", "auto")
        assert other.mode == "live" and "is running" in other.reason
        with pytest.raises(load_mode.LoadModeRefused, match="is running"):
            load_mode.begin(db.connect, "other", "run-4", "initial")
        joined.finish()
        assert joined.drift == []
    finally:
        owner.finish()
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert [row[2:4] for row in loads(conn)] == [
        ("initial", "DONE"),
        ("initial", "DONE"),
        ("live", "DONE"),
    ]


def test_a_load_whose_owner_died_while_live_runs_waited_is_finished_after_them(
    deposits: Path, conn: psycopg.Connection, database_url: str
) -> None:
    """The owner is killed; a live session that was waiting now holds the lock shared. The next
    run waits for it (not joining a load nobody owns), then builds the indexes."""
    db = LedgerDatabase(database_url=database_url)
    db.migrate()
    dead = load_mode.begin(db.connect, "dep", "run-1", "auto")
    assert dead.guard is not None
    dead.guard.close()
    with psycopg.connect(database_url, autocommit=True) as live:
        live.execute("SELECT pg_advisory_lock_shared(%s)", (LOAD_LOCK_KEY,))
        decided: dict[str, load_mode.Load] = {}
        waiter = threading.Thread(
            target=lambda: decided.update(load=load_mode.begin(db.connect, "dep", "run-2", "live"))
        )
        waiter.start()
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'advisory'"
                " AND query ILIKE '%pg_advisory_lock(%'"
            ).fetchone(),
            60,
            "the next run to wait for the live session",
        )
        assert not decided
    waiter.join(60)
    assert decided["load"].mode == "live"
    assert indexes(conn) >= SECONDARY | UNIQUE
    assert loads(conn)[0][2:4] == ("initial", "DONE")
