"""Exactly-once semantics of the posting stage, each on real PostgreSQL through real Dagster runs:
duplicates versus conflicts, SKIP_DUPLICATES=false, a lost commit acknowledgement, pause and
resume, interrupts, and balance validation during the run."""

from __future__ import annotations

import re
import signal
import threading
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.fault_harness import (
    HOLD_ACCOUNTS,
    PAUSE_PROBE_TABLE,
    Backfill,
    CommitAckDropper,
    Locker,
    checkpoints,
    ledger_backfill,
    poster_blocked,
    wait_until,
)
from ledger_backfill_dagster_tests.support.hardening_support import write_accounts, write_entries
from ledger_backfill_dagster_tests.support.helpers import (
    ASSETS,
    assert_ledger_invariants,
    balances,
    expected_balances,
    failure_text,
    materialize_range,
    use_source_files,
)

DAY1, DAY2 = "2024-01-01", "2024-01-02"
UP_TO_POSTING = ASSETS[:4]  # extract, transform, validate, post: runs that need no report


def entry(ref: str, debit: str, credit: str, amount: str, when: str, **extra: str) -> dict:
    return {
        "ledgerId": "MASTER",
        "debitAccountId": debit,
        "creditAccountId": credit,
        "amount": amount,
        "currencyCode": extra.pop("currency", "USD"),
        "assetType": "fiat",
        "transactionType": "TRANSFER",
        "referenceId": ref,
        "timestampUtc": when,
        **extra,
    }


def posting_metadata(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """The posting counters of the run: each partition's materialization carries its own."""
    keys = ("posted", "already_posted", "duplicates", "conflicts", "transient_retries")
    totals = dict.fromkeys(keys, 0)
    for materialization in result.asset_materializations_for_node("posted_batches"):
        for key in keys:
            totals[key] += materialization.metadata[key].value
    return totals


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    accounts = dict.fromkeys(["A-USD", "B-USD", "C-USD", "F-USD"], "USD")
    return write_accounts(
        tmp_path / "accounts.csv", accounts | dict.fromkeys(["D-EUR", "E-EUR"], "EUR")
    )


def use_source(monkeypatch, source: Path, accounts: Path, source_id: str, **env: str) -> None:
    use_source_files(monkeypatch, source, accounts, BACKFILL_SOURCE_ID=source_id, **env)


# -- duplicates and conflicts -------------------------------------------------------------------

T = "2024-01-01T10:00:0{}Z"


def test_identical_repeats_are_duplicates_and_changed_ones_conflicts(
    tmp_path: Path, backfill_env, accounts_file: Path, conn: psycopg.Connection, monkeypatch
) -> None:
    # Another source already posted R6 (identical to ours below) and R7 (different amount).
    other = write_entries(
        tmp_path / "other.csv",
        [
            entry("R6", "A-USD", "B-USD", "3.00", T.format(6)),
            entry("R7", "A-USD", "B-USD", "4.50", T.format(7)),
        ],
    )
    use_source(monkeypatch, other, accounts_file, "other-source", BATCH_SIZE="4")
    assert materialize_range(DAY1, DAY1, assets=UP_TO_POSTING).success

    rows = [
        # batch 1 (BATCH_SIZE=4)
        entry("R1", "A-USD", "B-USD", "10.00", T.format(1)),  # line 2: posted
        entry("R1", "A-USD", "B-USD", "10.00", T.format(1)),  # line 3: duplicate, same batch
        entry("R2", "A-USD", "C-USD", "5.00", T.format(2)),  # line 4: posted
        entry("R2", "A-USD", "C-USD", "6.00", T.format(2)),  # line 5: conflict, same batch
        # batch 2
        entry("R3", "B-USD", "C-USD", "1.00", T.format(3)),  # line 6: posted
        entry("R1", "A-USD", "B-USD", "10.00", T.format(1)),  # line 7: duplicate, across batches
        entry("R2", "A-USD", "F-USD", "5.00", T.format(2)),  # line 8: conflict, other account
        entry("R4", "A-USD", "B-USD", "2.00", T.format(4), metadata='{"x": 1}'),  # line 9: posted
        # batch 3
        entry("R4", "A-USD", "B-USD", "2.00", T.format(4), metadata='{"x": 2}'),  # 10: conflict
        entry("R5", "D-EUR", "E-EUR", "7.00", T.format(5), currency="EUR"),  # line 11: posted
        entry("R6", "A-USD", "B-USD", "3.00", T.format(6)),  # line 12: duplicate of other source
        entry("R7", "A-USD", "B-USD", "4.00", T.format(7)),  # line 13: conflict with other source
        # batch 4
        entry("R8", "A-USD", "B-USD", "1.50", T.format(8)),  # line 14: posted
        # partition 2024-01-02
        entry("R8", "A-USD", "B-USD", "1.50", "2024-01-02T09:00:00Z"),  # 15: conflict, other day
        entry("R5", "A-USD", "B-USD", "7.00", "2024-01-02T09:00:01Z"),  # 16: conflict, currency
        entry("R9", "A-USD", "B-USD", "9.00", "2024-01-02T09:00:02Z"),  # line 17: posted
        entry("R9", "A-USD", "B-USD", "9.00", "2024-01-02T09:00:02Z"),  # line 18: duplicate
    ]
    main = write_entries(tmp_path / "main.csv", rows)
    use_source(monkeypatch, main, accounts_file, "main-source", BATCH_SIZE="4")
    result = materialize_range(DAY1, DAY2)
    assert result.success

    posted = conn.execute(
        "SELECT reference_id, amount FROM ledger_entries WHERE backfill_source_id = 'main-source'"
        " ORDER BY reference_id"
    ).fetchall()
    assert [r for r, _ in posted] == ["R1", "R2", "R3", "R4", "R5", "R8", "R9"]
    assert dict(posted)["R2"] == Decimal("5.00")  # the first occurrence wins, the repeat waits

    duplicates = conn.execute(
        "SELECT d.line_number, d.reference_id, e.backfill_source_id FROM ledger_backfill_duplicates d"
        " JOIN ledger_entries e ON e.id = d.existing_entry_id ORDER BY d.line_number"
    ).fetchall()
    assert duplicates == [
        (3, "R1", "main-source"),
        (7, "R1", "main-source"),
        (12, "R6", "other-source"),
        (18, "R9", "main-source"),
    ]
    conflicts = conn.execute(
        "SELECT line_number, reference_id, differing_fields, existing_entry->>'amount',"
        " incoming_entry->>'amount' FROM ledger_backfill_conflicts ORDER BY line_number"
    ).fetchall()
    assert [(line, ref, fields) for line, ref, fields, _, _ in conflicts] == [
        (5, "R2", ["amount", "credit_amount"]),
        (8, "R2", ["credit_account_id"]),
        (10, "R4", ["metadata"]),
        (13, "R7", ["amount", "credit_amount"]),
        (15, "R8", ["timestamp_utc"]),
        (
            16,
            "R5",
            [
                "credit_account_id",
                "credit_currency_code",
                "currency_code",
                "debit_account_id",
                "timestamp_utc",
            ],
        ),
    ]
    # Both versions are kept: what the ledger holds and what the source said.
    amounts = {c[0]: (Decimal(c[3]), Decimal(c[4])) for c in conflicts}
    assert amounts[5] == (Decimal("5.00"), Decimal("6.00"))
    assert amounts[13] == (Decimal("4.50"), Decimal("4.00"))

    by_day = conn.execute(
        "SELECT total_processed, total_successful, total_duplicates, total_conflicts, status"
        " FROM ledger_backfill_checkpoints WHERE source_id = 'main-source' ORDER BY partition_key"
    ).fetchall()
    assert by_day == [(13, 6, 3, 4, "COMPLETED"), (4, 1, 1, 2, "COMPLETED")]
    metadata = posting_metadata(result)
    assert (metadata["posted"], metadata["duplicates"], metadata["conflicts"]) == (7, 4, 6)

    # Balances are those of the posted entries only: conflicts and duplicates moved nothing.
    assert balances(conn) == {
        "A-USD": Decimal("35.00"),
        "B-USD": Decimal("-29.00"),
        "C-USD": Decimal("-6.00"),
        "F-USD": Decimal("0"),
        "D-EUR": Decimal("7.00"),
        "E-EUR": Decimal("-7.00"),
    }
    assert_ledger_invariants(conn)

    # A second run changes nothing and records nothing twice.
    assert materialize_range(DAY1, DAY2, assets=UP_TO_POSTING).success
    assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM ledger_backfill_conflicts").fetchone()[0] == 6


def test_skip_duplicates_false_fails_naming_the_references(
    tmp_path: Path, backfill_env, accounts_file: Path, conn: psycopg.Connection, monkeypatch
) -> None:
    rows = [entry(f"S{i}", "A-USD", "B-USD", "1.00", T.format(i)) for i in range(4)]
    rows += [
        entry("S1", "A-USD", "B-USD", "1.00", T.format(1)),  # line 6: identical repeat
        entry("S9", "A-USD", "B-USD", "1.00", T.format(9)),
        entry("S3", "A-USD", "B-USD", "1.00", T.format(3)),  # line 8: identical repeat
    ]
    source = write_entries(tmp_path / "dups.csv", rows)
    use_source(monkeypatch, source, accounts_file, "dups", BATCH_SIZE="4", SKIP_DUPLICATES="false")
    result = materialize_range(DAY1, DAY1, raise_on_error=False, assets=UP_TO_POSTING)
    assert not result.success
    text = failure_text(result)
    assert "SKIP_DUPLICATES=false" in text
    assert "MASTER/S1 (line 6)" in text and "MASTER/S3 (line 8)" in text
    status, message, processed = conn.execute(
        "SELECT status, error_message, total_processed FROM ledger_backfill_checkpoints"
    ).fetchone()
    assert status == "FAILED" and "S1" in message and "S3" in message
    # The first batch committed; the batch with the duplicates did not, and nothing was counted.
    assert processed == 4
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 0

    monkeypatch.setenv("SKIP_DUPLICATES", "true")  # resume from the FAILED checkpoint
    assert materialize_range(DAY1, DAY1, assets=UP_TO_POSTING).success
    assert conn.execute(
        "SELECT status, total_processed, total_duplicates FROM ledger_backfill_checkpoints"
    ).fetchone() == ("COMPLETED", 7, 2)
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 5
    assert_ledger_invariants(conn)


# -- a commit whose acknowledgement is lost ---------------------------------------------------


def test_lost_commit_acknowledgement_is_neither_posted_nor_counted_twice(
    tmp_path: Path, backfill_env, database_url: str, conn: psycopg.Connection, monkeypatch
) -> None:
    data = generate(tmp_path / "data", entries=3000, days=1, accounts=20, seed=9)
    relay = CommitAckDropper(database_url, b"batches_committed = batches_committed + 1", trigger=2)
    try:
        use_source(
            monkeypatch,
            data.entries_file,
            data.accounts_file,
            "lost-ack",
            BATCH_SIZE="500",
            DATABASE_URL=relay.url,
        )
        result = materialize_range(DAY1, DAY1, assets=UP_TO_POSTING)
    finally:
        relay.close()
    assert relay.fired.is_set(), "the relay never cut a commit"
    assert result.success
    metadata = posting_metadata(result)
    # The batch whose COMMIT went through unacknowledged was retried and found already posted.
    assert metadata["transient_retries"] >= 1
    assert metadata["already_posted"] == 500
    assert metadata["posted"] == 2500
    row = conn.execute(
        "SELECT total_processed, total_successful, batches_committed, status"
        " FROM ledger_backfill_checkpoints"
    ).fetchone()
    assert row == (3000, 3000, 6, "COMPLETED")
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 3000
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
    assert_ledger_invariants(conn)


def _nonzero(values: dict) -> dict:
    return {k: v for k, v in values.items() if v != 0}


# -- balance validation during the run ------------------------------------------------------------


def test_balance_nudged_before_the_run_stops_it_failed_naming_the_account(
    tmp_path: Path, backfill_env, conn: psycopg.Connection, monkeypatch
) -> None:
    data = generate(tmp_path / "data", entries=4000, days=2, accounts=12, seed=4)
    use_source(
        monkeypatch,
        data.entries_file,
        data.accounts_file,
        "nudge",
        BATCH_SIZE="500",
        CHECKPOINT_INTERVAL="1",
        VALIDATE_BALANCES="true",
    )
    assert materialize_range(DAY1, DAY1, assets=UP_TO_POSTING).success
    conn.execute(
        "UPDATE bank_accounts SET balance = balance + 0.01, available_balance = available_balance"
        " + 0.01 WHERE id = 'CLR-USD'"
    )
    result = materialize_range(DAY2, DAY2, raise_on_error=False, assets=UP_TO_POSTING)
    assert not result.success
    text = failure_text(result)
    assert "CLR-USD" in text and "no longer equal the sum of their entries" in text
    status, message, batches = conn.execute(
        "SELECT status, error_message, batches_committed FROM ledger_backfill_checkpoints"
        " WHERE partition_key = %s",
        (DAY2,),
    ).fetchone()
    assert status == "FAILED" and "CLR-USD" in message
    assert batches == 1  # stopped at the first validation, after the first batch

    # Undo the nudge: the same run resumes after its committed batch and completes.
    conn.execute(
        "UPDATE bank_accounts SET balance = balance - 0.01, available_balance = available_balance"
        " - 0.01 WHERE id = 'CLR-USD'"
    )
    assert materialize_range(DAY2, DAY2, assets=UP_TO_POSTING).success
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
    assert_ledger_invariants(conn)


def test_balance_nudged_mid_run_stops_it_failed_naming_the_account(
    tmp_path: Path, backfill_env, conn: psycopg.Connection, monkeypatch
) -> None:
    data = generate(tmp_path / "data", entries=20_000, days=1, accounts=12, seed=6)
    use_source(
        monkeypatch,
        data.entries_file,
        data.accounts_file,
        "nudge-mid",
        BATCH_SIZE="200",
        CHECKPOINT_INTERVAL="2",
        LOAD_MODE="live",  # checked as it goes; an initial load checks once, after it
    )
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=materialize_range(DAY1, DAY1, raise_on_error=False, assets=UP_TO_POSTING)
        )
    )
    runner.start()

    def committed() -> int:
        return sum(s.batches for s in checkpoints(conn).values())

    try:
        wait_until(lambda: committed() >= 3, 120, "three batches to commit")
        conn.execute(
            "UPDATE bank_accounts SET balance = balance - 1, available_balance ="
            " available_balance - 1 WHERE id = 'CLR-EUR'"
        )
        at_nudge = committed()
    finally:
        runner.join(300)
    result = outcome["result"]
    assert not result.success
    assert "CLR-EUR" in failure_text(result)
    status, batches = conn.execute(
        "SELECT status, batches_committed FROM ledger_backfill_checkpoints"
    ).fetchone()
    assert status == "FAILED"
    assert at_nudge <= batches <= at_nudge + 2  # found at the next validation (every 2 batches)
    assert batches < 100


# -- pause and resume, interrupts ------------------------------------------------------------------


@pytest.fixture
def subprocess_backfill(tmp_path: Path, backfill_env: dict[str, str]):
    """20,000 entries over two days, 200 per batch: 50 batches per partition."""
    data = generate(tmp_path / "data", entries=20_000, days=2, accounts=20, start=date(2024, 1, 1))
    return data, {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_SOURCE_ID": "pause-test",
        "BATCH_SIZE": "200",
        "DAGSTER_HOME": str(dagster_home(tmp_path)),
    }


def _batches(conn: psycopg.Connection) -> int:
    return sum(s.batches for s in checkpoints(conn).values())


def _assert_stopped_cleanly(conn: psycopg.Connection, status: str) -> None:
    states = checkpoints(conn)
    assert states and {s.status for s in states.values()} == {status}, states
    assert sum(s.batches for s in states.values()) < 100
    ledger = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    assert ledger == sum(s.processed for s in states.values())


def _assert_resumes_to_completion(tmp_path, env, conn, data, name: str) -> None:
    again = Backfill(DAY1, DAY2, env, tmp_path / f"{name}.log")
    assert again.wait(300) == 0, again.tail()
    states = checkpoints(conn)
    assert {k: s.status for k, s in states.items()} == {DAY1: "COMPLETED", DAY2: "COMPLETED"}
    assert sum(s.processed for s in states.values()) == 20_000
    assert sum(s.successful for s in states.values()) == 20_000
    assert sum(s.batches for s in states.values()) == 100  # every batch committed exactly once
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 20_000
    assert _nonzero(balances(conn)) == _nonzero(expected_balances(data.entries_file))
    assert_ledger_invariants(conn)


@pytest.mark.slow
def test_pause_from_the_cli_stops_after_the_current_batch_and_resume_completes(
    tmp_path: Path, subprocess_backfill, conn: psycopg.Connection
) -> None:
    data, env = subprocess_backfill
    run = Backfill(DAY1, DAY2, env, tmp_path / "paused.log")
    wait_until(lambda: _batches(conn) >= 3, 180, "posting", run)
    # The moment is made, not raced: with the accounts locked, the next batch waits at its
    # account locks, so the run cannot finish before the CLI's request lands, however fast it is.
    accounts = Locker(env["DATABASE_URL"])
    try:
        accounts.hold(HOLD_ACCOUNTS)
        wait_until(
            lambda: poster_blocked(conn, except_on=PAUSE_PROBE_TABLE),
            60,
            "the next batch to wait for its accounts",
            run,
        )
        ledger_backfill(env, "pause")
        at_request = _batches(conn)
        accounts.release()
    finally:
        accounts.close()
    assert run.wait(120) != 0
    # The Dagster step failure says why the run stopped. The request may land in either day: the
    # day in flight is PAUSED, an earlier one COMPLETED.
    assert re.search(
        r"PAUSED: partition 2024-01-0[12]: paused on request after batch", run.output()
    )
    states = checkpoints(conn)
    assert {s.status for s in states.values()} in ({"PAUSED"}, {"COMPLETED", "PAUSED"}), states
    assert sum(s.batches for s in states.values()) < 100
    ledger = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    assert ledger == sum(s.processed for s in states.values())
    assert at_request <= _batches(conn) <= at_request + 1  # the batch in flight, no more
    message = conn.execute(
        "SELECT error_message FROM ledger_backfill_checkpoints WHERE status = 'PAUSED'"
    ).fetchone()[0]
    assert "paused on request" in message

    ledger_backfill(env, "resume")
    _assert_resumes_to_completion(tmp_path, env, conn, data, "resumed")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGINT, "1"), (signal.SIGTERM, "2")],
    ids=["SIGINT", "SIGTERM-2-workers"],
)
def test_terminate_pauses_the_run_and_a_rerun_resumes(
    tmp_path: Path, subprocess_backfill, conn: psycopg.Connection, sig: int, workers: str
) -> None:
    data, env = subprocess_backfill
    env = {**env, "PARALLEL_WORKERS": workers}
    run = Backfill(DAY1, DAY2, env, tmp_path / "terminated.log")
    wait_until(lambda: _batches(conn) >= 3, 180, "posting", run)
    run.proc.send_signal(sig)  # what Dagster's Terminate does to the run worker
    assert run.wait(120) != 0, "the run carried on after it was terminated"
    assert "PAUSED: " in run.output() and "interrupted (run terminated)" in run.output()
    _assert_stopped_cleanly(conn, "PAUSED")
    _assert_resumes_to_completion(tmp_path, env, conn, data, "resumed")
