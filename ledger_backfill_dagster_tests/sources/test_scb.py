"""SCB source and the dual-ledger sync: the central bank's ledger API on a real local HTTP server,
entries posted with their outbox rows, the relay marking them SENT (or FAILED), and the
dual-ledger check comparing control totals and finding outbox gaps."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.definitions import build_definitions
from ledger_backfill_dagster.defs.dual_ledger.sync import dual_ledger_consistency
from ledger_backfill_dagster.defs.operations.schedules import scb_daily_sync_schedule
from ledger_backfill_dagster.ledger.dual_ledger import check_dual_ledger
from ledger_backfill_dagster.ledger.outbox import RelayOptions, relay_outbox
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import SourceSettings
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import (
    ASSETS,
    all_event_text,
    assert_ledger_invariants,
    balances,
    expected_balances,
    failure_text,
    range_tags,
)
from ledger_backfill_dagster_tests.support.ledger_api_server import (
    LedgerApiServer,
    malformed,
    page_key,
    server_error,
    slow,
    too_many_requests,
)

TOKEN = "scb-token-77d0e4a1"
BANK = "SB-001"
RELAY_PATH = "/dual-ledger/entries"


@pytest.fixture
def server():
    with LedgerApiServer(token=TOKEN, bank=BANK) as running:
        yield running


def _definitions() -> dg.Definitions:
    """The code location (settings and the outbox endpoint from the environment), with the
    stages and the dual-ledger check as one job, and the check alone as another."""
    consistency = dg.AssetSelection.checks(dual_ledger_consistency)
    return build_definitions(
        resources={"ledger_db": LedgerDatabase(database_url=os.environ["DATABASE_URL"])},
        jobs=[
            dg.define_asset_job(
                "scb_backfill",
                selection=dg.AssetSelection.assets(*ASSETS).without_checks() | consistency,
            ),
            dg.define_asset_job("dual_ledger_check_only", selection=consistency),
        ],
    )


def run_range(job: str, first: str, last: str, raise_on_error: bool = True):
    with dg.instance_for_test() as instance:
        return (
            _definitions()
            .resolve_job_def(job)
            .execute_in_process(
                instance=instance,
                tags=range_tags(first, last),
                raise_on_error=raise_on_error,
            )
        )


def run_relay(config: dict | None = None, raise_on_error: bool = True):
    with dg.instance_for_test() as instance:
        return (
            _definitions()
            .resolve_job_def("dual_ledger_outbox_relay_job")
            .execute_in_process(
                instance=instance,
                run_config={"ops": {"relay_dual_ledger_outbox": {"config": config or {}}}},
                raise_on_error=raise_on_error,
            )
        )


def check_evaluation(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    return evaluation


@pytest.fixture
def scb_env(backfill_env, server, monkeypatch, tmp_path):
    data = generate(tmp_path / "data", entries=600, days=2, accounts=20, start=date(2024, 1, 1))
    assert server.load_scb_csv(data.entries_file) == 600
    for key, value in {
        "BACKFILL_SOURCE_TYPE": "SCB",
        "BACKFILL_SOURCE_URL": server.url,
        "BACKFILL_API_TOKEN": TOKEN,
        "SCB_SOVEREIGN_BANK_ID": BANK,
        "BACKFILL_SOURCE_PAGE_SIZE": "80",  # 4 pages a day
        "BACKFILL_SOURCE_TIMEOUT": "0.5",
        "BACKFILL_SOURCE_MAX_RETRIES": "3",
        "ACCOUNTS_FILE": str(data.accounts_file),
        "OUTBOX_RELAY_URL": server.url + RELAY_PATH,
        "OUTBOX_RELAY_TOKEN": TOKEN,
    }.items():
        monkeypatch.setenv(key, value)
    return data


@pytest.mark.slow
def test_scb_backfill_outbox_relay_and_dual_ledger_check(server, scb_env, database_url) -> None:
    server.queue(page_key("scb", "2024-01-01", 2), server_error(500))
    server.queue(page_key("scb", "2024-01-02", 1), too_many_requests("1"))
    server.queue(page_key("scb", "2024-01-02", 2), slow(2.0))
    wrong_bank = b'{"sovereignBankId": "SB-999", "page": 3, "totalPages": 4, "entries": []}'
    server.stick(page_key("scb", "2024-01-02", 3), malformed(wrong_bank))

    # 1. Transient faults are retried; a page for another bank stops the run, named.
    first = run_range("scb_backfill", "2024-01-01", "2024-01-02", raise_on_error=False)
    assert not first.success
    message = failure_text(first)
    assert "SCB page 3 of partition 2024-01-02" in message and "'SB-999'" in message
    assert TOKEN not in all_event_text(first)
    assert [r.status for r in server.requests_for(page_key("scb", "2024-01-01", 2))] == [500, 200]
    limited = server.requests_for(page_key("scb", "2024-01-02", 1))
    assert [r.status for r in limited] == [429, 200] and limited[1].at - limited[0].at >= 0.95
    assert len(server.requests_for(page_key("scb", "2024-01-02", 2))) == 2

    # 2. Fixed and re-run: every SCB entry posted once, with exactly one outbox row.
    server.clear()
    second = run_range("scb_backfill", "2024-01-01", "2024-01-02")
    assert second.success
    evaluation = check_evaluation(second)
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["control_totals_checked"].value is True
    assert evaluation.metadata["entries_without_outbox"].value == 0
    assert evaluation.metadata["outbox_pending"].value == 600
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)  # includes: every entry has exactly one outbox row
        rows = conn.execute(
            "SELECT e.ledger_id, e.reference_id, e.source_row_id, e.metadata, o.status"
            " FROM ledger_entries e JOIN dual_ledger_outbox o ON o.ledger_entry_id = e.id"
            " ORDER BY e.source_row_id"
        ).fetchall()
        assert len(rows) == 600
        assert rows[0][:3] == ("SOVEREIGN", f"SCB-{BANK}-0000001", 1001)
        assert rows[0][3]["scbSovereignBankId"] == BANK and rows[0][3]["scbSequence"] == 1001
        assert {r[4] for r in rows} == {"PENDING"}
        stored = {k: v for k, v in balances(conn).items() if v}
        assert stored == {k: v for k, v in expected_balances(scb_env.entries_file).items() if v}

    # 3. The relay delivers every row (one lost answer is retried) and marks it SENT.
    server.queue(RELAY_PATH, server_error(503))
    relay = run_relay({"batch_size": 250})
    assert relay.success
    with psycopg.connect(database_url) as conn:
        status = conn.execute(
            "SELECT status, attempts, count(*), count(sent_at) FROM dual_ledger_outbox"
            " GROUP BY 1, 2 ORDER BY 2"
        ).fetchall()
        references = {r[0] for r in conn.execute("SELECT reference_id FROM ledger_entries")}
    assert status == [("SENT", 1, 350, 350), ("SENT", 2, 250, 250)]
    assert {e["referenceId"] for e in server.received} == references
    assert len(server.received) == 850  # at least once: the first batch's answer was lost
    assert server.idempotency_keys[0] == server.idempotency_keys[1]
    again = relay_outbox(
        lambda: psycopg.connect(database_url),
        server.url + RELAY_PATH,
        TOKEN,
        RelayOptions(),
    )
    assert (again.sent, again.failed, len(server.received)) == (0, 0, 850)  # nothing left

    # 4. The check reports zero gaps; then the gap of an outbox row deleted by hand.
    clean = check_evaluation(run_range("dual_ledger_check_only", "2024-01-01", "2024-01-02"))
    assert clean.passed and clean.metadata["outbox_sent"].value == 600
    with psycopg.connect(database_url) as conn:
        entry_id, reference = conn.execute(
            "SELECT id, reference_id FROM ledger_entries WHERE backfill_partition = '2024-01-02'"
            " ORDER BY id LIMIT 1"
        ).fetchone()
        conn.execute("DELETE FROM dual_ledger_outbox WHERE ledger_entry_id = %s", (entry_id,))
    gap = check_evaluation(
        run_range("dual_ledger_check_only", "2024-01-01", "2024-01-02", raise_on_error=False)
    )
    assert not gap.passed
    assert gap.metadata["entries_without_outbox"].value == 1
    listed = gap.metadata["without_outbox"].value.records
    assert [(r.data["reference_id"], r.data["partition_key"]) for r in listed] == [
        (reference, "2024-01-02")
    ]

    # 5. And a day whose SCB control totals say more than our ledger holds.
    server.extra_scb_totals["2024-01-01"] = {"USD": (1, "5.00")}
    source = SourceSettings.from_env().reader()  # as the CLI does, outside a run
    with source.client() as client:
        totals = {d: source.control_totals(client, d) for d in ("2024-01-01", "2024-01-02")}
    with psycopg.connect(database_url) as conn:
        report = check_dual_ledger(conn, source.source_id, ["2024-01-01", "2024-01-02"], totals)
    (mismatch,) = report.mismatches
    assert (mismatch.partition_key, mismatch.currency) == ("2024-01-01", "USD")
    assert mismatch.scb_count == mismatch.ledger_count + 1
    assert mismatch.scb_sum == mismatch.ledger_sum + Decimal("5.00")
    assert report.gaps == 1


SEED_ENTRY = """
INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES ('A', 'USD', true), ('B', 'USD', true);
INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id, amount, currency_code,
    credit_amount, credit_currency_code, asset_type, transaction_type, reference_id, timestamp_utc,
    metadata, content_fingerprint)
SELECT 'SOVEREIGN', 'A', 'B', 10.10, 'USD', 10.10, 'USD', 'cbdc', 'SETTLEMENT', 'SCB-R-' || n,
       '2024-01-05T10:00:00Z', '{"rate": 1.10}', 'test'
  FROM generate_series(1, 5) n;
INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)
SELECT id, ledger_id, reference_id FROM ledger_entries;
"""


def test_relay_marks_failed_rows_with_attempts_and_error_then_retries_them(
    server, ledger_db, conn, monkeypatch
) -> None:
    conn.execute(SEED_ENTRY)
    server.stick(RELAY_PATH, server_error(500))
    options = RelayOptions(batch_size=2, max_retries=2, retry_delay_ms=10)
    outcome = relay_outbox(ledger_db.connect, server.url + RELAY_PATH, TOKEN, options)
    assert (outcome.sent, outcome.failed, outcome.batches) == (0, 5, 3)
    rows = conn.execute(
        "SELECT status, attempts, last_error, sent_at FROM dual_ledger_outbox ORDER BY id"
    ).fetchall()
    assert {(r[0], r[1], r[3]) for r in rows} == {("FAILED", 3, None)}
    assert all("outbox rows" in r[2] and "server error 500" in r[2] for r in rows)
    # Money and metadata numbers go out exactly as stored, never through a float.
    assert (
        b'"amount":"10.10"' in server.bodies[0] and b'"metadata":{"rate":1.10}' in server.bodies[0]
    )

    # A plain relay leaves FAILED rows alone; the Dagster job with include_failed retries them.
    server.clear()
    monkeypatch.setenv("DATABASE_URL", ledger_db.database_url)
    monkeypatch.setenv("OUTBOX_RELAY_URL", server.url + RELAY_PATH)
    monkeypatch.setenv("OUTBOX_RELAY_TOKEN", TOKEN)
    assert relay_outbox(ledger_db.connect, server.url + RELAY_PATH, TOKEN, options).sent == 0
    assert run_relay({"include_failed": True}).success
    rows = conn.execute("SELECT status, attempts, last_error FROM dual_ledger_outbox").fetchall()
    assert set(rows) == {("SENT", 4, None)}
    assert server.received[-1]["amount"] == "10.10"  # exact decimal text, never a float


def test_relay_job_fails_when_rows_fail(server, ledger_db, conn, monkeypatch) -> None:
    conn.execute(SEED_ENTRY)
    server.stick(RELAY_PATH, server_error(502))
    monkeypatch.setenv("DATABASE_URL", ledger_db.database_url)
    monkeypatch.setenv("OUTBOX_RELAY_URL", server.url + RELAY_PATH)
    monkeypatch.setenv("OUTBOX_RELAY_TOKEN", TOKEN)
    monkeypatch.setenv("RETRY_DELAY", "10")
    result = run_relay({"max_retries": 1}, raise_on_error=False)
    assert not result.success
    assert "5 outbox row(s) FAILED" in failure_text(result)
    assert TOKEN not in all_event_text(result)


def test_daily_schedule_syncs_yesterday_only_for_an_scb_source() -> None:
    assert scb_daily_sync_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    tick = datetime(2024, 3, 10, 1, 30, tzinfo=UTC)
    with dg.build_schedule_context(
        scheduled_execution_time=tick,
        resources={"source": SourceSettings(source_type="SCB", scb_sovereign_bank_id=BANK)},
    ) as context:
        request = scb_daily_sync_schedule(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2024-03-09"
    assert request.run_key == "scb-daily-sync-2024-03-09"
    with dg.build_schedule_context(
        scheduled_execution_time=tick, resources={"source": SourceSettings()}
    ) as context:
        skipped = scb_daily_sync_schedule(context)
    assert isinstance(skipped, dg.SkipReason) and "not SCB" in skipped.skip_message
