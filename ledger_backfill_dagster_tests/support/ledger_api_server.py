"""A real HTTP server on 127.0.0.1 standing in for the remote third parties: an entries API, the
central bank's (SCB) ledger API, and the dual-ledger endpoint the outbox relay delivers to.

It serves the page formats documented in docs/sources.md from in-memory entries, checks the
bearer token, logs every request, and plays scripted faults per page: 5xx, 429 with Retry-After,
a response slower than the client's timeout, a malformed body. Queued faults are served once
each, in order; a `sticky` fault is served until `clear()` (the "fix").
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class Fault:
    status: int = 200
    body: bytes | None = None  # a replacement body (malformed page)
    delay: float = 0.0  # seconds to wait before answering (a timeout)
    headers: dict[str, str] = field(default_factory=dict)


def server_error(status: int = 500) -> Fault:
    return Fault(status=status, body=b'{"error": "internal"}')


def too_many_requests(retry_after: str) -> Fault:
    return Fault(status=429, body=b'{"error": "slow down"}', headers={"Retry-After": retry_after})


def slow(seconds: float) -> Fault:
    return Fault(delay=seconds)


def malformed(body: bytes) -> Fault:
    return Fault(body=body)


@dataclass
class Request:
    at: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    authorized: bool


class LedgerApiServer:
    """Start with `with LedgerApiServer(token=...) as server:`; `server.url` is its base URL."""

    def __init__(self, token: str, bank: str = "SB-001") -> None:
        self.token = token
        self.bank = bank
        self.api_entries: dict[str, list[dict]] = defaultdict(list)  # day → API entries
        self.scb_entries: dict[str, list[dict]] = defaultdict(list)  # day → SCB entries
        self.extra_scb_totals: dict[str, dict[str, tuple[int, str]]] = {}
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.sticky: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self.received: list[dict] = []  # entries delivered to the dual-ledger endpoint
        self.idempotency_keys: list[str] = []
        self.bodies: list[bytes] = []  # raw request bodies, to check numbers on the wire
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LedgerApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- scripting ----------------------------------------------------------------------------
    def queue(self, page: str, *faults: Fault) -> None:
        """Serve these faults (once each) on the next requests of `page` (see `page_key`)."""
        self.faults[page].extend(faults)

    def stick(self, page: str, fault: Fault) -> None:
        self.sticky[page] = fault

    def clear(self) -> None:
        self.faults.clear()
        self.sticky.clear()

    def requests_for(self, page: str) -> list[Request]:
        return [r for r in self.requests if _page_key(r.path, r.query) == page]

    # -- data ---------------------------------------------------------------------------------
    def load_api_csv(self, entries_csv: Path) -> int:
        """Canonical CSV rows → API entries (id = row number), grouped by UTC day."""
        with entries_csv.open(newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=1):
                entry: dict[str, object] = {"id": number, **row}
                entry["fxRate"] = row["fxRate"] or None
                entry["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
                self.api_entries[row["timestampUtc"][:10]].append(entry)
        return sum(len(v) for v in self.api_entries.values())

    def load_scb_csv(self, entries_csv: Path) -> int:
        """Canonical CSV rows → the SCB's own entry format (sequence, entryId, valueDate, ...)."""
        with entries_csv.open(newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=1):
                self.scb_entries[row["timestampUtc"][:10]].append(
                    {
                        "sequence": 1000 + number,
                        "entryId": f"SCB-{self.bank}-{number:07d}",
                        "ledger": "SOVEREIGN",
                        "valueDate": row["timestampUtc"],
                        "debitAccount": row["debitAccountId"],
                        "creditAccount": row["creditAccountId"],
                        "amount": row["amount"],
                        "currency": row["currencyCode"],
                        "assetClass": "cbdc",
                        "entryType": row["transactionType"],
                        "fxRate": None,
                        "details": {"channel": "RTGS"} if number % 7 == 0 else None,
                    }
                )
        return sum(len(v) for v in self.scb_entries.values())

    def scb_totals(self, day: str) -> list[dict]:
        totals: dict[str, list] = {}
        for entry in self.scb_entries.get(day, []):
            count, amount = totals.get(entry["currency"], (0, Decimal(0)))
            totals[entry["currency"]] = (count + 1, amount + Decimal(entry["amount"]))
        for currency, (count, amount) in self.extra_scb_totals.get(day, {}).items():
            base = totals.get(currency, (0, Decimal(0)))
            totals[currency] = (base[0] + count, base[1] + Decimal(amount))
        return [
            {"currency": c, "count": n, "sum": format(s, "f")}
            for c, (n, s) in sorted(totals.items())
        ]

    # -- serving ------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body_in = self.rfile.read(length) if length else b""
                authorized = self.headers.get("Authorization") == f"Bearer {server.token}"
                status, body, headers, delay = server._answer(
                    method, parts.path, query, body_in, authorized, self.headers
                )
                with server.lock:
                    server.requests.append(
                        Request(time.monotonic(), method, parts.path, query, status, authorized)
                    )
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): expected

        return Handler

    def _answer(self, method, path, query, body_in, authorized, headers):  # type: ignore[no-untyped-def]
        key = _page_key(path, query)
        with self.lock:
            fault = self.faults[key].pop(0) if self.faults.get(key) else self.sticky.get(key)
        if not authorized:
            return 401, b'{"error": "unauthorized"}', {}, 0.0
        status, body = self._content(method, path, query, body_in, headers)
        if fault is None:
            return status, body, {}, 0.0
        return (
            fault.status,
            fault.body if fault.body is not None else body,
            fault.headers,
            fault.delay,
        )

    def _content(self, method, path, query, body_in, headers):  # type: ignore[no-untyped-def]
        if method == "POST" and path == "/dual-ledger/entries":
            document = json.loads(body_in, parse_float=Decimal)
            with self.lock:
                self.bodies.append(body_in)
                self.received.extend(document["entries"])
                self.idempotency_keys.append(headers.get("Idempotency-Key", ""))
            return 202, b'{"accepted": true}'
        if path == "/entries":
            day = query["from"][:10]
            entries = self.api_entries.get(day, [])
            offset = int(query.get("cursor", 0))
            limit = int(query["limit"])
            page = entries[offset : offset + limit]
            following = str(offset + limit) if offset + limit < len(entries) else None
            return 200, json.dumps({"entries": page, "next_cursor": following}).encode()
        prefix = f"/sovereign-banks/{self.bank}/"
        if path == prefix + "ledger-entries":
            day = query["from"][:10]
            entries = self.scb_entries.get(day, [])
            number, size = int(query["page"]), int(query["pageSize"])
            document = {
                "sovereignBankId": self.bank,
                "page": number,
                "pageSize": size,
                "totalPages": math.ceil(len(entries) / size),
                "entries": entries[(number - 1) * size : number * size],
            }
            return 200, json.dumps(document).encode()
        if path == prefix + "control-totals":
            day = query["date"]
            document = {"sovereignBankId": self.bank, "date": day, "totals": self.scb_totals(day)}
            return 200, json.dumps(document).encode()
        return 404, b'{"error": "not found"}'


def _page_key(path: str, query: dict[str, str]) -> str:
    """A page's name for scripting faults: 'entries 2024-01-02 #3', 'scb 2024-01-02 #3', ..."""
    if path == "/entries":
        offset = int(query.get("cursor", 0))
        return f"entries {query.get('from', '')[:10]} #{offset // int(query.get('limit', 1)) + 1}"
    if path.endswith("/ledger-entries"):
        return f"scb {query.get('from', '')[:10]} #{query.get('page')}"
    if path.endswith("/control-totals"):
        return f"totals {query.get('date')}"
    return f"{path}"


def page_key(kind: str, day: str, number: int) -> str:
    return f"{kind} {day} #{number}"
