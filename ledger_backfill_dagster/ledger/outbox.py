"""The outbox relay: delivers `dual_ledger_outbox` rows and records their sync status.

Posting writes one PENDING outbox row per entry in the entry's own transaction (the transactional
outbox of the seed's scenario 4). The relay claims a batch of rows (FOR UPDATE SKIP LOCKED, so two
relays never send the same row), POSTs their entries to the dual-ledger endpoint, and in the same
transaction marks them SENT, or FAILED with the number of attempts and the last error once its
own retries (transient errors: connection, timeout, 5xx, 429 with Retry-After) are spent. FAILED
rows stay FAILED until a relay run is asked to retry them (`include_failed`).

Delivery is at least once: a batch whose answer is lost is sent again. Each entry carries its
outbox id and reference id, and each request an Idempotency-Key, so the receiver can deduplicate.

The request (docs/sources.md):

    POST {OUTBOX_RELAY_URL}          Authorization: Bearer {OUTBOX_RELAY_TOKEN}
         Idempotency-Key: dual-ledger-outbox-{first id}-{last id}
    {"entries": [{"outboxId": 1, "ledgerEntryId": 7, "ledgerId": "SOVEREIGN",
                  "referenceId": "SCB-...", "debitAccountId": ..., "creditAccountId": ...,
                  "amount": "100.00", "currencyCode": "USD", "creditAmount": "100.00",
                  "creditCurrencyCode": "USD", "assetType": "cbdc", "transactionType": ...,
                  "timestampUtc": "2024-01-05T10:00:00+00:00", "fxRate": null,
                  "metadata": {...}}, ...]}
    any 2xx = delivered
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import DictRow, dict_row

from ledger_backfill_dagster.lib.http_client import (
    JsonHttpClient,
    MalformedPageError,
    RetrySettings,
    SourceRefusedError,
    SourceUnavailableError,
    decimal_json,
    dump_json,
)
from ledger_backfill_dagster.lib.redaction import redact
from ledger_backfill_dagster.lib.sql_files import query

log = logging.getLogger(__name__)

PENDING, SENT, FAILED = "PENDING", "SENT", "FAILED"


@dataclass(frozen=True)
class RelayOptions:
    batch_size: int = 100
    max_retries: int = 3
    retry_delay_ms: int = 1000
    timeout_seconds: float = 30.0
    max_retry_after: float = 120.0
    include_failed: bool = False
    source_id: str | None = None  # only entries backfilled from this source
    limit: int | None = None  # at most this many rows in one relay run


@dataclass
class RelayOutcome:
    sent: int = 0
    failed: int = 0
    batches: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def _payload(row: dict) -> dict[str, object]:
    return {
        "outboxId": row["outbox_id"],
        "ledgerEntryId": row["ledger_entry_id"],
        "ledgerId": row["ledger_id"],
        "referenceId": row["reference_id"],
        "debitAccountId": row["debit_account_id"],
        "creditAccountId": row["credit_account_id"],
        "amount": row["amount"],
        "currencyCode": row["currency_code"],
        "creditAmount": row["credit_amount"],
        "creditCurrencyCode": row["credit_currency_code"],
        "assetType": row["asset_type"],
        "transactionType": row["transaction_type"],
        "timestampUtc": row["timestamp_utc"].isoformat(),
        "fxRate": row["fx_rate"],
        "metadata": decimal_json(row["metadata"].encode()) if row["metadata"] else None,
    }


def relay_outbox(
    connect: Callable[[], psycopg.Connection],
    endpoint_url: str,
    token: str | None,
    options: RelayOptions,
) -> RelayOutcome:
    """Deliver every claimable outbox row once; returns what was sent and what failed."""
    outcome = RelayOutcome()
    statuses = [PENDING, FAILED] if options.include_failed else [PENDING]
    retry = RetrySettings(
        max_retries=options.max_retries,
        initial_delay=options.retry_delay_ms / 1000,
        max_delay=max(options.retry_delay_ms / 1000 * 16, 1.0),
        max_retry_after=options.max_retry_after,
    )
    after = 0
    with (
        JsonHttpClient(endpoint_url, token, options.timeout_seconds, retry) as client,
        connect() as conn,
    ):
        while options.limit is None or outcome.sent + outcome.failed < options.limit:
            size = options.batch_size
            if options.limit is not None:
                size = min(size, options.limit - outcome.sent - outcome.failed)
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(
                    query("dual_ledger/outbox_claim"),
                    {
                        "statuses": statuses,
                        "after": after,
                        "source_id": options.source_id,
                        "limit": size,
                    },
                ).fetchall()
                if not rows:
                    break
                ids = [r["outbox_id"] for r in rows]
                after = ids[-1]
                _deliver(cur, client, rows, ids, outcome)
    return outcome


def _deliver(
    cur: psycopg.Cursor[DictRow],
    client: JsonHttpClient,
    rows: list[DictRow],
    ids: list[int],
    outcome: RelayOutcome,
) -> None:
    label = f"outbox rows {ids[0]}..{ids[-1]} ({len(ids)} entries)"
    before = client.requests
    try:
        client.post_json(
            "",
            dump_json({"entries": [_payload(r) for r in rows]}),
            label,
            headers={"Idempotency-Key": f"dual-ledger-outbox-{ids[0]}-{ids[-1]}"},
        )
    except (SourceUnavailableError, SourceRefusedError, MalformedPageError) as exc:
        error = redact(str(exc))
        cur.execute(
            query("dual_ledger/outbox_mark"),
            {
                "status": FAILED,
                "attempts": client.requests - before,
                "last_error": error,
                "ids": ids,
            },
        )
        outcome.failed += len(ids)
        outcome.errors.append(error)
        log.warning("dual-ledger relay: %s", error)
    else:
        cur.execute(
            query("dual_ledger/outbox_mark"),
            {"status": SENT, "attempts": client.requests - before, "last_error": None, "ids": ids},
        )
        outcome.sent += len(ids)
    outcome.batches += 1
    outcome.requests += client.requests - before
