"""The SCB Source Reader: a sovereign bank's entries from the central bank's ledger API.

The seed's scenario 4 and its `backfillFromSCB(sovereignBankId, startDate, endDate)` example: the
date range is the run's partitions, the bank is SCB_SOVEREIGN_BANK_ID, and each entry is
transformed to our format and posted through the same atomic path as every other source, which
writes its `dual_ledger_outbox` row in the same transaction. The formats (docs/sources.md):

    GET {BACKFILL_SOURCE_URL}/sovereign-banks/{bank}/ledger-entries
        ?from=2024-01-05T00:00:00Z&to=2024-01-06T00:00:00Z&page=1&pageSize=N
    200 {"sovereignBankId": "{bank}", "page": 1, "totalPages": 3,
         "entries": [{"sequence": 901, "entryId": "SCB-...", "ledger": "SOVEREIGN",
                      "valueDate": "2024-01-05T10:00:00Z", "debitAccount": ..., "creditAccount": ...,
                      "amount": "100.00", "currency": "USD", "assetClass": "cbdc",
                      "entryType": "SETTLEMENT", "fxRate": null, "details": {...}}, ...]}

    GET {BACKFILL_SOURCE_URL}/sovereign-banks/{bank}/control-totals?date=2024-01-05
    200 {"sovereignBankId": "{bank}", "date": "2024-01-05",
         "totals": [{"currency": "USD", "count": 12, "sum": "1234.50"}, ...]}

`sequence` (an integer, unique per bank) becomes the staged `source_row_id`; `entryId` the
reference id. The control totals feed the dual-ledger check (`ledger/dual_ledger.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import cast
from urllib.parse import quote, urlencode

from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.http_client import JsonHttpClient, MalformedPageError
from ledger_backfill_dagster.sources.api import (
    Page,
    PagedHttpSource,
    entry_id,
    field_text,
    utc_iso,
)

# SCB entry field → the contract's field.
SCB_FIELDS = {
    "ledger": "ledgerId",
    "debitAccount": "debitAccountId",
    "creditAccount": "creditAccountId",
    "amount": "amount",
    "currency": "currencyCode",
    "assetClass": "assetType",
    "entryType": "transactionType",
    "entryId": "referenceId",
    "valueDate": "timestampUtc",
    "fxRate": "fxRate",
    "details": "metadata",
    "amountMinor": "amountMinor",  # optional: the amount in minor units (issue 19)
}


def transform_scb_entry(
    entry: dict, bank: str, label: str, position: int
) -> tuple[int, dict[str, str | None], dict[str, object]]:
    """The seed's `transformSCBEntry`: an SCB entry → (sequence, canonical fields, extras)."""
    sequence = entry_id(entry, "sequence", label, position)
    fields: dict[str, str | None] = {}
    extras: dict[str, object] = {"scbSovereignBankId": bank, "scbSequence": sequence}
    for name, value in entry.items():
        if name == "sequence":
            continue
        if name in SCB_FIELDS:
            fields[SCB_FIELDS[name]] = field_text(value)
        elif value is not None:
            extras[f"scb_{name}"] = value
    return sequence, fields, extras


@dataclass
class ScbSource(PagedHttpSource):
    sovereign_bank_id: str = ""
    source_type: str = "SCB"

    def __post_init__(self) -> None:
        if not self.sovereign_bank_id:
            raise SettingsError("an SCB source needs SCB_SOVEREIGN_BANK_ID")

    @property
    def source_id(self) -> str:
        return self.explicit_source_id or f"scb:{self.sovereign_bank_id}"

    @property
    def bank_path(self) -> str:
        return f"sovereign-banks/{quote(self.sovereign_bank_id, safe='')}"

    def selection(self) -> object:
        return self.sovereign_bank_id

    def fetch_page(
        self,
        client: JsonHttpClient,
        partition_key: str,
        window: tuple[datetime, datetime],
        resume: object | None,
        number: int,
    ) -> Page:
        # the resume is the next page's number, as this reader wrote it (Page.next_resume)
        page_number = int(cast(int, resume)) if resume is not None else 1
        params = {
            "from": utc_iso(window[0]),
            "to": utc_iso(window[1]),
            "page": page_number,
            "pageSize": self.page_size,
        }
        path = f"{self.bank_path}/ledger-entries"
        label = (
            f"SCB page {page_number} of partition {partition_key} (GET /{path}?{urlencode(params)})"
        )
        document = client.get_json(path, params, label)
        if not isinstance(document, dict):
            raise MalformedPageError(
                label, f"expected a JSON object, got {type(document).__name__}"
            )
        self._same_bank(document, label)
        if document.get("page") != page_number:
            raise MalformedPageError(
                label, f"'page' is {document.get('page')!r}, expected {page_number}"
            )
        total = document.get("totalPages")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise MalformedPageError(label, "'totalPages' must be a non-negative integer")
        entries = document.get("entries")
        if not isinstance(entries, list):
            raise MalformedPageError(label, "'entries' is missing or not a list")
        converted = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise MalformedPageError(label, f"entry {position} is not a JSON object")
            converted.append(transform_scb_entry(entry, self.sovereign_bank_id, label, position))
        last = page_number >= total or not entries
        return Page(label, converted, None if last else page_number + 1, last)

    def control_totals(
        self, client: JsonHttpClient, partition_key: str
    ) -> dict[str, tuple[int, Decimal]]:
        """The SCB side's count and exact sum per currency of one day."""
        path = f"{self.bank_path}/control-totals"
        label = f"SCB control totals of {partition_key} (GET /{path}?date={partition_key})"
        document = client.get_json(path, {"date": partition_key}, label)
        if not isinstance(document, dict):
            raise MalformedPageError(label, "expected a JSON object")
        self._same_bank(document, label)
        if document.get("date") != partition_key:
            raise MalformedPageError(label, f"'date' is {document.get('date')!r}")
        rows = document.get("totals")
        if not isinstance(rows, list):
            raise MalformedPageError(label, "'totals' is missing or not a list")
        totals: dict[str, tuple[int, Decimal]] = {}
        for row in rows:
            try:
                currency, count, amount = row["currency"], row["count"], Decimal(str(row["sum"]))
            except (TypeError, KeyError, InvalidOperation) as exc:
                raise MalformedPageError(label, f"bad totals row {row!r}") from exc
            if not isinstance(currency, str) or not isinstance(count, int) or currency in totals:
                raise MalformedPageError(label, f"bad totals row {row!r}")
            totals[currency] = (count, amount)
        return totals

    def _same_bank(self, document: dict, label: str) -> None:
        if document.get("sovereignBankId") != self.sovereign_bank_id:
            raise MalformedPageError(
                label,
                f"'sovereignBankId' is {document.get('sovereignBankId')!r}, "
                f"expected {self.sovereign_bank_id!r}",
            )
