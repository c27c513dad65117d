"""API source: a real HTTP server on 127.0.0.1 serving pages, with 5xx, 429 + Retry-After, a
response slower than the timeout and a malformed page; retried, failed clearly, resumed, exact."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from ledger_backfill_dagster.lib.http_client import (
    MalformedPageError,
    SourceRefusedError,
    SourceUnavailableError,
    retry_after_seconds,
)
from ledger_backfill_dagster.sources.api import ApiSource
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import (
    all_event_text,
    assert_ledger_invariants,
    balances,
    expected_balances,
    failure_text,
    materialize_range,
)
from ledger_backfill_dagster_tests.support.ledger_api_server import (
    LedgerApiServer,
    malformed,
    page_key,
    server_error,
    slow,
    too_many_requests,
)

TOKEN = "api-token-5b1f0c2e9d"


@pytest.fixture
def server():
    with LedgerApiServer(token=TOKEN) as running:
        yield running


def statuses(server: LedgerApiServer, page: str) -> list[int]:
    return [r.status for r in server.requests_for(page)]


@pytest.mark.slow
def test_api_backfill_retries_transient_faults_fails_on_a_malformed_page_and_resumes(
    server, backfill_env, database_url, tmp_path, monkeypatch
) -> None:
    data = generate(tmp_path / "data", entries=1200, days=3, accounts=20, start=date(2024, 1, 1))
    assert server.load_api_csv(data.entries_file) == 1200
    for key, value in {
        "BACKFILL_SOURCE_TYPE": "API",
        "BACKFILL_SOURCE_URL": server.url,
        "BACKFILL_API_TOKEN": TOKEN,
        "BACKFILL_SOURCE_PAGE_SIZE": "100",  # 4 pages a day
        "BACKFILL_SOURCE_TIMEOUT": "0.5",
        "BACKFILL_SOURCE_MAX_RETRIES": "3",
        "ACCOUNTS_FILE": str(data.accounts_file),
    }.items():
        monkeypatch.setenv(key, value)
    server.queue(page_key("entries", "2024-01-01", 2), server_error(500), server_error(503))
    server.queue(page_key("entries", "2024-01-02", 2), too_many_requests("1"))
    server.queue(page_key("entries", "2024-01-02", 3), slow(2.0))  # beyond the 0.5 s timeout
    bad_page = page_key("entries", "2024-01-03", 3)
    server.stick(bad_page, malformed(b'{"entries": [{"id": 801, "amount": "1'))

    first = materialize_range("2024-01-01", "2024-01-03", raise_on_error=False)
    assert not first.success
    message = failure_text(first)
    assert "API page 3 of partition 2024-01-03" in message and "malformed" in message
    assert "cursor=200" in message  # the page is named by its request, too
    assert TOKEN not in all_event_text(first)
    # Transient faults were retried; the malformed page was not (no silent skip, no retry).
    assert statuses(server, page_key("entries", "2024-01-01", 2)) == [500, 503, 200]
    rate_limited = server.requests_for(page_key("entries", "2024-01-02", 2))
    assert [r.status for r in rate_limited] == [429, 200]
    assert rate_limited[1].at - rate_limited[0].at >= 0.95  # Retry-After: 1 was honoured
    assert len(server.requests_for(page_key("entries", "2024-01-02", 3))) == 2  # timed out once
    assert len(server.requests_for(bad_page)) == 1
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0

    server.clear()  # the API is fixed
    second = materialize_range("2024-01-01", "2024-01-03")
    assert second.success
    # Day 3 resumed at its failed page: its first two pages were fetched once in all.
    assert len(server.requests_for(page_key("entries", "2024-01-03", 1))) == 1
    assert len(server.requests_for(page_key("entries", "2024-01-03", 2))) == 1
    assert len(server.requests_for(bad_page)) == 2
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 1200
        stored = {k: v for k, v in balances(conn).items() if v}
        assert stored == {k: v for k, v in expected_balances(data.entries_file).items() if v}
        assert_ledger_invariants(conn)
        # The checkpoint's last_processed_id is the API's own entry id.
        last = conn.execute(
            "SELECT last_processed_id FROM ledger_backfill_checkpoints ORDER BY partition_key"
        ).fetchall()
        assert last == [("400",), ("800",), ("1200",)]
    report = second.asset_materializations_for_node("reconciliation_report")
    assert all(m.metadata["reconciles"].value for m in report)


def api_source(server: LedgerApiServer, token: str = TOKEN, **options) -> ApiSource:
    return ApiSource(
        base_url=server.url,
        token=token,
        page_size=options.pop("page_size", 2),
        timeout_seconds=options.pop("timeout_seconds", 2.0),
        max_retries=options.pop("max_retries", 2),
        retry_delay_ms=options.pop("retry_delay_ms", 20),
        **options,
    )


def entry(number: int, **fields) -> dict:
    base = {
        "id": number,
        "debitAccountId": "A",
        "creditAccountId": "B",
        "amount": "1.00",
        "currencyCode": "USD",
        "referenceId": f"R-{number}",
        "transactionType": "TRANSFER",
        "timestampUtc": f"2024-01-05T10:00:{number:02d}Z",
    }
    return base | fields


def test_a_wrong_token_fails_at_once_naming_the_page(server, tmp_path) -> None:
    server.api_entries["2024-01-05"] = [entry(1)]
    with pytest.raises(SourceRefusedError) as failure:
        api_source(server, token="wrong").extract(["2024-01-05"], tmp_path)
    assert failure.value.status == 401
    assert "API page 1 of partition 2024-01-05" in str(failure.value)
    assert "BACKFILL_API_TOKEN" in str(failure.value) and "wrong" not in str(failure.value)
    assert len(server.requests) == 1  # a refusal is not retried


def test_a_page_that_stays_down_fails_after_its_retries(server, tmp_path) -> None:
    server.api_entries["2024-01-05"] = [entry(1), entry(2), entry(3)]
    down = page_key("entries", "2024-01-05", 2)
    server.stick(down, server_error(502))
    with pytest.raises(SourceUnavailableError) as failure:
        api_source(server).extract(["2024-01-05"], tmp_path)
    assert "API page 2 of partition 2024-01-05" in str(failure.value)
    assert "3 attempt(s)" in str(failure.value) and "502" in str(failure.value)
    assert statuses(server, down) == [502, 502, 502]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"entries": {}, "next_cursor": null}', "'entries' is missing or not a list"),
        (b'{"entries": []}', "'next_cursor' is missing"),
        (b'{"entries": [{"amount": "1"}], "next_cursor": null}', "'id' must be"),
        (b'{"entries": [[1]], "next_cursor": null}', "entry 0 is not a JSON object"),
        (
            b'{"entries": [{"id": 9, "timestampUtc": "2024-01-06T00:00:00Z"}], "next_cursor": null}',
            "outside the requested window",
        ),
    ],
)
def test_malformed_pages_are_named_never_skipped(server, tmp_path, body, reason) -> None:
    server.api_entries["2024-01-05"] = [entry(1)]
    server.stick(page_key("entries", "2024-01-05", 1), malformed(body))
    with pytest.raises(MalformedPageError) as failure:
        api_source(server).extract(["2024-01-05"], tmp_path)
    assert reason in str(failure.value)
    assert str(failure.value).startswith("API page 1 of partition 2024-01-05 (GET /entries?")


def test_repeated_ids_across_pages_are_refused(server, tmp_path) -> None:
    server.api_entries["2024-01-05"] = [entry(1), entry(2), entry(2, referenceId="R-x")]
    with pytest.raises(MalformedPageError, match="entry id 2 was already served"):
        api_source(server).extract(["2024-01-05"], tmp_path)


def test_numbers_stay_exact_and_unknown_fields_are_kept(server, tmp_path) -> None:
    """JSON numbers are read as Decimal: 0.1 stays "0.1", 12345678901234567.89 is not rounded."""
    body = (
        b'{"entries": [{"id": 1, "debitAccountId": "A", "creditAccountId": "B",'
        b' "amount": 12345678901234567.89, "currencyCode": "USD", "referenceId": "R-1",'
        b' "transactionType": "T", "timestampUtc": "2024-01-05T01:00:00Z", "fxRate": 0.1,'
        b' "metadata": {"rate": 1.10}, "branch": "north"}], "next_cursor": null}'
    )
    server.stick(page_key("entries", "2024-01-05", 1), malformed(body))
    result = api_source(server).extract(["2024-01-05"], tmp_path)
    row = pq.read_table(result.staged["2024-01-05"]).to_pylist()[0]
    assert row["amount"] == "12345678901234567.89"
    assert Decimal(row["amount"]) == Decimal("12345678901234567.89")
    assert row["fxRate"] == "0.1"
    assert row["metadata"] == '{"rate":1.10}'
    assert json.loads(row["extra_columns"]) == {"branch": "north"}
    assert row["source_row_id"] == 1


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2024, 1, 5, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Fri, 05 Jan 2024 12:00:07 GMT", now=now) == 7.0
    assert retry_after_seconds("garbage") is None
    assert retry_after_seconds(None) is None


def test_staged_partition_is_complete_or_absent(server, tmp_path: Path) -> None:
    """A read that failed mid-day leaves nothing in the partition's staged folder; the next run
    continues from the saved cursor and swaps the whole day in at once."""
    server.api_entries["2024-01-05"] = [entry(n) for n in range(1, 8)]
    bad = page_key("entries", "2024-01-05", 3)
    server.stick(bad, malformed(b"{"))
    source = api_source(server)
    with pytest.raises(MalformedPageError):
        source.extract(["2024-01-05"], tmp_path)
    final = tmp_path / source.source_key / "paged" / "partition_key=2024-01-05"
    assert not final.exists()
    server.clear()
    result = source.extract(["2024-01-05"], tmp_path)
    assert result.rows_by_partition == {"2024-01-05": 7}
    assert result.details["partitions_resumed"] == 1
    ids = sorted(pq.read_table(final).column("source_row_id").to_pylist())
    assert ids == list(range(1, 8))
    assert len(server.requests_for(page_key("entries", "2024-01-05", 1))) == 1
