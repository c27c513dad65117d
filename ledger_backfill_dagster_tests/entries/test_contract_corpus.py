"""The ledger entry contract, case by case: one CSV holds every bad input the contract names, each
between valid rows, and a real Dagster backfill into a real database must give each line the
outcome its rule says (posted with the right values, a duplicate, or a reject with the expected
reason, line number and partition). The corpus costs two runs, not one per case.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    materialize_range,
)

INJECTION = "'; DROP TABLE ledger_entries; --"
ODD_ACCOUNT = "Robert'); DROP TABLE bank_accounts;--"
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
POSTED = "posted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"

ACCOUNTS = [
    ("U1", "USD"),
    ("U2", "USD"),
    ("U3", "USD"),
    (ODD_ACCOUNT, "USD"),
    ("E1", "EUR"),
    ("E2", "EUR"),
    ("J1", "JPY"),
    ("J2", "JPY"),
    ("B1", "BHD"),
    ("B2", "BHD"),
    ("G1", "XAU"),
    ("G2", "XAU"),
]
ACCOUNT_MAP = {"SRC-U1": "U1", "SRC-U2": "U2", "LEGACY 9": "U3"}
TRANSACTION_TYPE_MAP = {"xfer": "TRANSFER", "pmt": "PAYMENT"}
# Rows whose whole content repeats (so timestamps and partitions are fixed).
GENERATED = {"amount": "77.77", "timestampUtc": "2024-01-03T09:00:00Z", "metadata": '{"k": 1}'}
REPEATED = {"referenceId": "DUP-1", "amount": "5.00", "timestampUtc": "2024-01-02T12:00:00Z"}

# Reasons, as the contract and the readers word them (substrings).
AMOUNT_FORMAT = "amount: not a plain decimal greater than zero"
AMOUNT_PLACES = "amount: more fractional digits than the currency's minor units"
AMOUNT_HUGE = "amount: more than 24 digits before the point"
CURRENCY_UNKNOWN = "currencyCode: not an ISO 4217 currency"
CURRENCY_NOT_DEBIT = "currencyCode: differs from the debit account's currency"
FX_REQUIRED = "fxRate: required"
FX_FORMAT = "fxRate: not a plain decimal greater than zero"
FX_SAME = "fxRate: given, but both accounts are in the same currency"
CREDIT_ZERO = "creditAmount: converts to zero"
DEBIT_UNKNOWN = "debitAccountId: no such account"
CREDIT_UNKNOWN = "creditAccountId: no such account"
DEBIT_EMPTY = "debitAccountId: empty"
SAME_ACCOUNT = "debitAccountId and creditAccountId are the same account"
ASSET_TYPE = "assetType: not one of fiat, cbdc, commodity, security"
TXN_EMPTY = "transactionType: empty"
TS_EMPTY = "timestampUtc: empty"
TS_BAD = "timestampUtc: not an ISO 8601 timestamp"
TS_FUTURE = "timestampUtc: later than the run's start"
TS_EARLY = "timestampUtc: before BACKFILL_START_DATE"
TS_LOCAL = "timestampUtc: local time does not exist or is ambiguous"
META = "metadata: not a JSON object"
META_UNSTORABLE = "metadata: holds text JSONB cannot store"
NUL = "NUL character"
MALFORMED = "malformed line:"


@dataclass
class Case:
    """One line of the corpus and the outcome its rule requires."""

    name: str
    fields: dict[str, str] | None = None  # overrides of a valid row
    raw: bytes | None = None  # or the line's exact bytes (CSV-level faults)
    expect: str = POSTED  # POSTED, DUPLICATE, CONFLICT, or a reject reason
    reasons: tuple[str, ...] = ()  # further reasons the reject must carry
    partition: str | None = "same"  # "same" = the partition of the row's day; None = no partition
    stored: dict[str, object] = field(default_factory=dict)  # columns of the posted entry
    check: Callable[[dict], None] | None = None
    line: int = 0  # filled in when the file is written


def valid_row(n: int, day: str) -> dict[str, str]:
    return {
        "ledgerId": "",
        "debitAccountId": "U1",
        "creditAccountId": "U2",
        "amount": f"{n + 1}.25",
        "currencyCode": "USD",
        "assetType": "fiat",
        "transactionType": "PAYMENT",
        "referenceId": f"C-{n:03d}",
        "timestampUtc": f"{day}T10:{n % 60:02d}:00Z",
        "fxRate": "",
        "metadata": "",
    }


def _line(values: dict[str, str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([values[f] for f in CANONICAL_FIELDS])
    return buffer.getvalue().encode("utf-8")


def _raw(n: int, day: str, **changes: str) -> bytes:
    """A valid row as bytes, fields replaced verbatim (no quoting added)."""
    values = {**valid_row(n, day), **changes}
    return (",".join(values[f] for f in CANONICAL_FIELDS) + "\n").encode("utf-8")


def corpus() -> list[Case]:
    """Every bad input the contract names, with the outcome each must get."""
    d = DAYS[0]
    cases = [
        # --- amount ---
        Case("amount with a minus sign", {"amount": "-10.00"}, expect=AMOUNT_FORMAT),
        Case("amount with a plus sign", {"amount": "+10.00"}, expect=AMOUNT_FORMAT),
        Case("amount with an exponent", {"amount": "1e3"}, expect=AMOUNT_FORMAT),
        Case("amount with a thousands separator", {"amount": "1,000.00"}, expect=AMOUNT_FORMAT),
        Case(
            "amount with a space as thousands separator",
            {"amount": "1 000.00"},
            expect=AMOUNT_FORMAT,
        ),
        Case("amount NaN", {"amount": "NaN"}, expect=AMOUNT_FORMAT),
        Case("amount Infinity", {"amount": "Infinity"}, expect=AMOUNT_FORMAT),
        Case("amount zero", {"amount": "0.00"}, expect=AMOUNT_FORMAT),
        Case("amount empty", {"amount": ""}, expect=AMOUNT_FORMAT),
        Case("amount without integer digits", {"amount": ".50"}, expect=AMOUNT_FORMAT),
        Case("amount ending in a point", {"amount": "5."}, expect=AMOUNT_FORMAT),
        Case("amount in hexadecimal", {"amount": "0x1A"}, expect=AMOUNT_FORMAT),
        Case("amount in Arabic-Indic digits", {"amount": "١٢٣"}, expect=AMOUNT_FORMAT),
        Case("amount in full-width digits", {"amount": "１０.００"}, expect=AMOUNT_FORMAT),
        Case("amount with 25 integer digits", {"amount": "1" * 25}, expect=AMOUNT_HUGE),
        Case("USD amount with 3 decimals", {"amount": "10.001"}, expect=AMOUNT_PLACES),
        Case(
            "JPY amount with a decimal",
            {
                "debitAccountId": "J1",
                "creditAccountId": "J2",
                "currencyCode": "JPY",
                "amount": "100.5",
            },
            expect=AMOUNT_PLACES,
        ),
        Case(
            "BHD amount with 4 decimals",
            {
                "debitAccountId": "B1",
                "creditAccountId": "B2",
                "currencyCode": "BHD",
                "amount": "1.0001",
            },
            expect=AMOUNT_PLACES,
        ),
        Case(
            "BHD amount with 3 decimals is fine",
            {
                "debitAccountId": "B1",
                "creditAccountId": "B2",
                "currencyCode": "BHD",
                "amount": "1.234",
            },
            stored={"amount": Decimal("1.234"), "credit_amount": Decimal("1.234")},
        ),
        Case(
            "JPY whole amount is fine",
            {
                "debitAccountId": "J1",
                "creditAccountId": "J2",
                "currencyCode": "JPY",
                "amount": "1500",
            },
            stored={"amount": Decimal("1500")},
        ),
        Case(
            "XAU (no ISO minor units) with 18 decimals is fine",
            {
                "debitAccountId": "G1",
                "creditAccountId": "G2",
                "currencyCode": "XAU",
                "amount": "0.000000000000000001",
            },
            stored={"amount": Decimal("0.000000000000000001")},
        ),
        Case(
            "XAU with 19 decimals",
            {
                "debitAccountId": "G1",
                "creditAccountId": "G2",
                "currencyCode": "XAU",
                "amount": "0.0000000000000000001",
            },
            expect=AMOUNT_PLACES,
        ),
        Case(
            "amount with surrounding whitespace is trimmed",
            {"amount": "  10.50  "},
            stored={"amount": Decimal("10.50")},
        ),
        # --- currency ---
        Case(
            "lower-case currency with spaces is fine",
            {"currencyCode": " usd "},
            stored={"currency_code": "USD"},
        ),
        Case("unknown currency code", {"currencyCode": "ABC"}, expect=CURRENCY_UNKNOWN),
        Case("currency XXX (no currency)", {"currencyCode": "XXX"}, expect=CURRENCY_UNKNOWN),
        Case("currency XTS (testing code)", {"currencyCode": "XTS"}, expect=CURRENCY_UNKNOWN),
        Case("currency empty", {"currencyCode": ""}, expect=CURRENCY_UNKNOWN),
        Case(
            "currency differs from the debit account's",
            {"currencyCode": "EUR"},
            expect=CURRENCY_NOT_DEBIT,
        ),
        # --- fx ---
        Case("crossing currencies without fxRate", {"creditAccountId": "E1"}, expect=FX_REQUIRED),
        Case("fxRate zero", {"creditAccountId": "E1", "fxRate": "0"}, expect=FX_FORMAT),
        Case("fxRate negative", {"creditAccountId": "E1", "fxRate": "-0.9"}, expect=FX_FORMAT),
        Case("fxRate malformed", {"creditAccountId": "E1", "fxRate": "abc"}, expect=FX_FORMAT),
        Case(
            "fxRate with an exponent", {"creditAccountId": "E1", "fxRate": "9e-1"}, expect=FX_FORMAT
        ),
        Case("fxRate given for the same currency", {"fxRate": "1.1"}, expect=FX_SAME),
        Case(
            "fxRate 1 for the same currency is allowed",
            {"fxRate": "1.000"},
            stored={"fx_rate": Decimal("1.000")},
            check=_credit_equals_amount,
        ),
        Case(
            "EUR to JPY: 1.00 x 2.5 rounds half-even to 2",
            {
                "debitAccountId": "E1",
                "creditAccountId": "J1",
                "currencyCode": "EUR",
                "amount": "1.00",
                "fxRate": "2.5",
            },
            stored={
                "credit_amount": Decimal("2"),
                "credit_currency_code": "JPY",
                "fx_rate": Decimal("2.5"),
            },
        ),
        Case(
            "EUR to JPY: 3.00 x 2.5 rounds half-even to 8",
            {
                "debitAccountId": "E2",
                "creditAccountId": "J2",
                "currencyCode": "EUR",
                "amount": "3.00",
                "fxRate": " 2.5 ",
            },
            stored={"credit_amount": Decimal("8")},
        ),
        Case(
            "EUR to JPY at 162.3456",
            {
                "debitAccountId": "E1",
                "creditAccountId": "J2",
                "currencyCode": "EUR",
                "amount": "10.05",
                "fxRate": "162.3456",
            },
            stored={"credit_amount": Decimal("1632")},  # 1631.57328
        ),
        Case(
            "USD to BHD to 3 places",
            {
                "debitAccountId": "U3",
                "creditAccountId": "B1",
                "amount": "1.00",
                "fxRate": "0.37705",
            },
            stored={"credit_amount": Decimal("0.377"), "credit_currency_code": "BHD"},
        ),
        Case(
            "credit side converts to zero",
            {
                "debitAccountId": "E1",
                "creditAccountId": "J1",
                "currencyCode": "EUR",
                "amount": "0.01",
                "fxRate": "0.01",
            },
            expect=CREDIT_ZERO,
        ),
        # --- accounts ---
        Case("unknown debit account", {"debitAccountId": "NOPE"}, expect=DEBIT_UNKNOWN),
        Case("unknown credit account", {"creditAccountId": "NOPE"}, expect=CREDIT_UNKNOWN),
        Case("account ids are case-sensitive", {"debitAccountId": "u1"}, expect=DEBIT_UNKNOWN),
        Case("empty debit account", {"debitAccountId": ""}, expect=DEBIT_EMPTY),
        Case("same account on both sides", {"creditAccountId": "U1"}, expect=SAME_ACCOUNT),
        Case(
            "same account after mapping",
            {"debitAccountId": "SRC-U1", "creditAccountId": "U1"},
            expect=SAME_ACCOUNT,
        ),
        Case(
            "mapped accounts",
            {"debitAccountId": "LEGACY 9", "creditAccountId": "SRC-U1"},
            stored={"debit_account_id": "U3", "credit_account_id": "U1"},
        ),
        Case(
            "account ids are trimmed", {"debitAccountId": " U3 "}, stored={"debit_account_id": "U3"}
        ),
        Case(
            "account id holding SQL is stored verbatim",
            {"debitAccountId": ODD_ACCOUNT},
            stored={"debit_account_id": ODD_ACCOUNT},
        ),
        # --- asset type, transaction type, ledger ---
        Case("unknown asset type", {"assetType": "crypto"}, expect=ASSET_TYPE),
        Case("empty asset type means fiat", {"assetType": ""}, stored={"asset_type": "fiat"}),
        Case(
            "asset type is case-insensitive", {"assetType": " CBDC "}, stored={"asset_type": "cbdc"}
        ),
        Case("empty transaction type", {"transactionType": ""}, expect=TXN_EMPTY),
        Case("blank transaction type", {"transactionType": "   "}, expect=TXN_EMPTY),
        Case(
            "mapped transaction type",
            {"transactionType": "xfer"},
            stored={"transaction_type": "TRANSFER"},
        ),
        Case(
            "unmapped transaction type passes through",
            {"transactionType": "Chargeback"},
            stored={"transaction_type": "Chargeback"},
        ),
        Case("empty ledgerId takes LEDGER_ID", {}, stored={"ledger_id": "CORPUS"}),
        Case("explicit ledgerId", {"ledgerId": "SOVEREIGN"}, stored={"ledger_id": "SOVEREIGN"}),
        # --- timestamps (SOURCE_TIMEZONE=America/New_York) ---
        Case("empty timestamp", {"timestampUtc": ""}, expect=TS_EMPTY, partition=None),
        Case("unparseable timestamp", {"timestampUtc": "yesterday"}, expect=TS_BAD, partition=None),
        Case(
            "timestamp not in ISO shape",
            {"timestampUtc": "2024-1-2T10:00:00Z"},
            expect=TS_BAD,
            partition=None,
        ),
        Case(
            "timestamp with hour 25",
            {"timestampUtc": "2024-01-02T25:00:00Z"},
            expect=TS_BAD,
            partition=None,
        ),
        Case(
            "timestamp on February 30",
            {"timestampUtc": "2024-02-30T10:00:00Z"},
            expect=TS_BAD,
            partition=None,
        ),
        Case(
            "timestamp in Arabic-Indic digits",
            {"timestampUtc": "٢٠٢٤-01-02T10:00:00Z"},
            expect=TS_BAD,
            partition=None,
        ),
        Case(
            "timestamp in the future",
            {"timestampUtc": "2999-01-01T00:00:00Z"},
            expect=TS_FUTURE,
            partition=None,
        ),
        Case(
            "timestamp before BACKFILL_START_DATE",
            {"timestampUtc": "2023-12-31T23:59:59Z"},
            expect=TS_EARLY,
            partition=None,
        ),
        Case(
            "offset moves it before BACKFILL_START_DATE",
            {"timestampUtc": "2024-01-01T02:00:00+05:00"},
            expect=TS_EARLY,
            partition=None,
        ),
        Case(
            "offset converted to UTC (previous day)",
            {"timestampUtc": "2024-01-02T01:30:00+05:00"},
            partition="2024-01-01",
            check=_at("2024-01-01T20:30:00+00:00"),
        ),
        Case(
            "naive time read in SOURCE_TIMEZONE (next UTC day)",
            {"timestampUtc": "2024-01-01T22:00:00"},
            partition="2024-01-02",
            check=_at("2024-01-02T03:00:00+00:00"),
        ),
        Case(
            "date only is local midnight",
            {"timestampUtc": "2024-01-03"},
            partition="2024-01-03",
            check=_at("2024-01-03T05:00:00+00:00"),
        ),
        Case(
            "fractional seconds with a comma",
            {"timestampUtc": "2024-01-02T10:00:00,5Z"},
            partition="2024-01-02",
            check=_at("2024-01-02T10:00:00.500000+00:00"),
        ),
        Case(
            "local time skipped by DST",
            {"timestampUtc": "2024-03-10T02:30:00"},
            expect=TS_LOCAL,
            partition=None,
        ),
        Case(
            "local time repeated by DST",
            {"timestampUtc": "2024-11-03T01:30:00"},
            expect=TS_LOCAL,
            partition=None,
        ),
        # --- reference ids ---
        Case(
            "empty referenceId gets a generated one",
            {**GENERATED, "referenceId": ""},
            partition=DAYS[2],
            check=_generated_reference,
        ),
        Case(
            # issue 13: identity is content plus occurrence, so an identical second payment
            # without a reference posts under its own generated id instead of being a duplicate
            "same content without referenceId again is a second payment, posted",
            {**GENERATED, "referenceId": " "},
            partition=DAYS[2],
        ),
        Case(
            "referenceId holding SQL is stored verbatim",
            {"referenceId": INJECTION},
            stored={"reference_id": INJECTION},
        ),
        Case(
            "referenceId keeps its spaces",
            {"referenceId": "  R-SPACED  "},
            stored={"reference_id": "  R-SPACED  "},
        ),
        Case(
            "referenceId in any script",
            {"referenceId": "R-ünïcødé-✓-参照"},
            stored={"reference_id": "R-ünïcødé-✓-参照"},
        ),
        Case("first use of a reference", REPEATED, partition=DAYS[1]),
        Case("identical repeat of a reference", REPEATED, expect=DUPLICATE),
        Case("changed repeat of a reference", {**REPEATED, "amount": "6.00"}, expect=CONFLICT),
        # --- metadata ---
        Case("metadata array", {"metadata": "[1, 2]"}, expect=META),
        Case("metadata number", {"metadata": "42"}, expect=META),
        Case("metadata string", {"metadata": '"text"'}, expect=META),
        Case("metadata null", {"metadata": "null"}, expect=META),
        Case("metadata invalid JSON", {"metadata": "{bad"}, expect=META),
        Case("metadata with NaN", {"metadata": '{"x": NaN}'}, expect=META),
        Case("metadata with Infinity", {"metadata": '{"x": -Infinity}'}, expect=META),
        Case("metadata with trailing text", {"metadata": '{"a": 1} extra'}, expect=META),
        Case(
            "metadata with an escaped NUL",
            {"metadata": '{"a": "x\\u0000y"}'},
            expect=META_UNSTORABLE,
            reasons=(NUL,),
        ),
        Case(
            "metadata with a lone surrogate",
            {"metadata": '{"a": "\\ud800"}'},
            expect=META_UNSTORABLE,
        ),
        Case(
            "metadata holding SQL is stored as written",
            {"metadata": json.dumps({"note": INJECTION})},
            check=_metadata_is({"note": INJECTION}),
        ),
        Case("blank metadata is none", {"metadata": "   "}, stored={"metadata": None}),
        # --- NUL characters and CSV-level faults ---
        Case(
            "NUL inside a field",
            raw=_raw(0, d, transactionType="PAY\x00MENT", referenceId="NUL-1"),
            expect=NUL,
            partition=DAYS[0],
        ),
        Case(
            "NUL inside a referenceId",
            raw=_raw(0, d, referenceId="NUL\x00-2"),
            expect=NUL,
            partition=DAYS[0],
        ),
        Case(
            "too few fields",
            raw=b"MASTER,U1,U2,1.00,USD\n",
            expect=MALFORMED,
            reasons=("wrong field count",),
            partition=None,
        ),
        Case(
            "too many fields",
            raw=_raw(0, d, metadata="x,y"),
            expect=MALFORMED,
            reasons=("wrong field count",),
            partition=None,
        ),
        Case(
            "wrong field count with a NUL",
            raw=b"MASTER,U1\x00,U2\n",
            expect=MALFORMED,
            partition=None,
        ),
        Case(
            # An unclosed quote takes the rest of the file (issue #13): test_hardening_csv_quotes.
            "text after a closing quote",
            raw=_raw(0, d, transactionType='"PAY"MENT'),
            expect=MALFORMED,
            reasons=("quot",),
            partition=None,
        ),
        Case(
            "stray quote",
            raw=_raw(0, d, transactionType='PAY"MENT'),
            expect=MALFORMED,
            reasons=("quot",),
            partition=None,
        ),
        Case(
            "invalid UTF-8",
            raw=_raw(0, d, transactionType="PAY").replace(b"PAY", b"P\xffY"),
            expect=MALFORMED,
            reasons=("invalid UTF-8",),
            partition=None,
        ),
        Case(
            "byte-order mark inside the file",
            raw=b"\xef\xbb\xbf" + _raw(0, d, referenceId="BOM"),
            expect=MALFORMED,
            reasons=("byte-order mark",),
            partition=None,
        ),
        Case("a line of empty fields", raw=b",,,,,,,,,,\n", expect=TS_EMPTY, partition=None),
        Case(
            "quoted field spanning two lines",
            {"metadata": '{"a":\n1}', "referenceId": "MULTI"},
            check=_metadata_is({"a": 1}),
        ),
        Case(
            "CRLF line ending",
            raw=_raw(0, d, referenceId="CRLF").replace(b"\n", b"\r\n"),
            partition=DAYS[0],
            stored={"reference_id": "CRLF"},
        ),
        # --- several rules at once: every reason is given ---
        Case(
            "every reason at once",
            {
                "amount": "-1",
                "currencyCode": "ABC",
                "assetType": "x",
                "transactionType": "",
                "creditAccountId": "U1",
            },
            expect=AMOUNT_FORMAT,
            reasons=(CURRENCY_UNKNOWN, ASSET_TYPE, TXN_EMPTY, SAME_ACCOUNT),
        ),
    ]
    return cases


def _credit_equals_amount(entry: dict) -> None:
    assert entry["credit_amount"] == entry["amount"]


def _at(expected: str) -> Callable[[dict], None]:
    def check(entry: dict) -> None:
        assert entry["timestamp_utc"].isoformat() == expected

    return check


def _metadata_is(expected: dict) -> Callable[[dict], None]:
    def check(entry: dict) -> None:
        assert entry["metadata"] == expected

    return check


def _generated_reference(entry: dict) -> None:
    assert entry["reference_id"].startswith("BACKFILL-"), entry["reference_id"]


def write_corpus(path: Path) -> tuple[list[Case], list[int], list[int]]:
    """Write every case between valid rows; return the cases (with lines), the valid rows' lines
    and the blank lines."""
    cases = corpus()
    out = bytearray(b"\xef\xbb\xbf" + _line({f: f for f in CANONICAL_FIELDS}))
    line = 2
    valid_lines: list[int] = []
    blank_lines: list[int] = []

    def add(chunk: bytes) -> int:
        nonlocal line
        start = line
        out.extend(chunk)
        line += chunk.count(b"\n")
        return start

    for n, case in enumerate(cases):
        day = DAYS[n % len(DAYS)]
        filler = {**valid_row(500 + n, day), "referenceId": f"OK-{n:03d}"}
        valid_lines.append(add(_line(filler)))
        if n % 17 == 5:  # blank lines are ignored, wherever they are
            blank_lines.append(add(b"\n"))
            blank_lines.append(add(b"   \r\n"))
        if case.raw is not None:
            case.line = add(case.raw)
        else:
            values = {**valid_row(n, day), **(case.fields or {})}
            case.line = add(_line(values))
        if case.partition == "same":
            case.partition = day
    last = {**valid_row(999, DAYS[0]), "referenceId": "OK-LAST"}
    valid_lines.append(add(_line(last).rstrip(b"\n")))  # no newline at the end of the file
    path.write_bytes(bytes(out))
    return cases, valid_lines, blank_lines


@pytest.fixture
def corpus_env(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    accounts = tmp_path / "accounts.csv"
    with accounts.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accountId", "currencyCode", "allowNegative"])
        writer.writerows([(a, c, "true") for a, c in ACCOUNTS])
    account_map = tmp_path / "account_map.csv"
    account_map.write_text(
        "sourceId,ledgerAccountId\n" + "".join(f"{k},{v}\n" for k, v in ACCOUNT_MAP.items())
    )
    type_map = tmp_path / "types.csv"
    type_map.write_text(
        "sourceType,ledgerType\n" + "".join(f"{k},{v}\n" for k, v in TRANSACTION_TYPE_MAP.items())
    )
    source = tmp_path / "corpus.csv"
    cases, valid_lines, blank_lines = write_corpus(source)
    settings = {
        "BACKFILL_SOURCE_FILE": str(source),
        "ACCOUNTS_FILE": str(accounts),
        "ACCOUNT_MAP_FILE": str(account_map),
        "TRANSACTION_TYPE_MAP_FILE": str(type_map),
        "SOURCE_TIMEZONE": "America/New_York",
        "LEDGER_ID": "CORPUS",
        "BATCH_SIZE": "50",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    backfill_env.update(settings)
    return cases, valid_lines, blank_lines


def _entries(conn: psycopg.Connection) -> dict[int, dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM ledger_entries").fetchall()
    return {r["source_row_id"]: r for r in rows}


def _rejects(conn: psycopg.Connection) -> dict[int, dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM ledger_backfill_rejects").fetchall()
    return {r["line_number"]: r for r in rows}


def _lines(conn: psycopg.Connection, table: str) -> set[int]:
    return {r[0] for r in conn.execute(f"SELECT line_number FROM {table}").fetchall()}  # noqa: S608


def test_corpus_every_line_gets_its_outcome(corpus_env, database_url: str) -> None:
    cases, valid_lines, blank_lines = corpus_env
    assert len({c.name for c in cases if c.expect != POSTED}) >= 40
    result = materialize_range(DAYS[0], DAYS[-1])
    assert result.success  # bad rows alone never fail a run

    with psycopg.connect(database_url) as conn:
        entries, rejects = _entries(conn), _rejects(conn)
        duplicates = _lines(conn, "ledger_backfill_duplicates")
        conflicts = _lines(conn, "ledger_backfill_conflicts")
        failures = []
        for case in cases:
            try:
                _assert_outcome(case, entries, rejects, duplicates, conflicts)
            except AssertionError as exc:
                failures.append(f"line {case.line} {case.name}: {exc}")
        assert not failures, "\n".join(failures)
        for line in valid_lines:
            assert line in entries, f"valid line {line} was not posted"
            assert line not in rejects
        for line in blank_lines:
            assert line not in entries and line not in rejects
        # Nothing else was posted or rejected, and nothing was dropped.
        outcome_lines = set(entries) | set(rejects) | duplicates | conflicts
        assert outcome_lines == {c.line for c in cases} | set(valid_lines)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == len(entries)
        assert_ledger_invariants(conn)
        # Rows with no readable timestamp are quarantined once per source.
        unpartitioned = conn.execute(
            "SELECT count(*), count(DISTINCT source_row_id) FROM ledger_backfill_rejects"
            " WHERE partition_key IS NULL"
        ).fetchone()
        expected_unpartitioned = sum(1 for c in cases if c.expect != POSTED and c.partition is None)
        assert unpartitioned == (expected_unpartitioned, expected_unpartitioned)

    report = result.asset_materializations_for_node("reconciliation_report")[0].metadata
    read = report["rows_read"].value
    assert read == len(cases) + len(valid_lines)
    assert read == sum(report[k].value for k in ("posted", "duplicates", "conflicts", "rejected"))
    assert report["reconciles"].value, report["report"].value
    # Each partition's materialization carries that partition's count of rejects.
    events = result.asset_materializations_for_node("validated_entries")
    validated = events[0].metadata
    rejected_in_partitions = sum(event.metadata["rejected"].value for event in events)
    assert rejected_in_partitions + validated["rejected_without_partition"].value == len(rejects)
    assert len(validated["by_partition"].value.records) == len(DAYS)

    # One error report per partition lists its rejects; one lists those of no partition.
    source = SourceSettings.from_env().reader()
    errors = MonitoringSettings.from_env().reports_path / source.source_key / "errors"
    for day in DAYS:
        listed = _report_lines(errors / f"{day}.csv")
        assert listed == {line for line, r in rejects.items() if r["partition_key"] == day}
    assert _report_lines(errors / "unpartitioned.csv") == {
        line for line, r in rejects.items() if r["partition_key"] is None
    }

    # Another run over one day: rows of no partition are still quarantined once, and the
    # other days' rejects are left as they were.
    assert materialize_range(DAYS[1], DAYS[1]).success
    with psycopg.connect(database_url) as conn:
        again = _rejects(conn)
        assert conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0] == len(
            rejects
        )
        assert {k: (r["partition_key"], r["reasons"]) for k, r in again.items()} == {
            k: (r["partition_key"], r["reasons"]) for k, r in rejects.items()
        }
        assert len(_entries(conn)) == len(entries)


def _report_lines(path: Path) -> set[int]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["reasons"] for r in rows)
    return {int(r["line_number"]) for r in rows}


def _assert_outcome(case, entries, rejects, duplicates, conflicts) -> None:
    if case.expect == POSTED:
        assert case.line in entries, (
            f"not posted; rejected for {rejects.get(case.line, {}).get('reasons')}"
        )
        entry = entries[case.line]
        assert entry["backfill_partition"] == case.partition
        for column, value in case.stored.items():
            assert entry[column] == value, f"{column}: {entry[column]!r} != {value!r}"
        if case.check:
            case.check(entry)
        return
    assert case.line not in entries, "posted, but should not be"
    if case.expect == DUPLICATE:
        assert case.line in duplicates, "not recorded as a duplicate"
        return
    if case.expect == CONFLICT:
        assert case.line in conflicts, "not recorded as a conflict"
        return
    assert case.line in rejects, "neither posted nor rejected"
    reject = rejects[case.line]
    for wanted in (case.expect, *case.reasons):
        assert any(wanted in r for r in reject["reasons"]), f"{wanted!r} not in {reject['reasons']}"
    assert reject["partition_key"] == case.partition
    assert reject["raw_text"] is not None or reject["raw_row"] is not None
