"""The source-parity corpus (issue 20): rows, honest and hostile, one per rule of the contract, that
`sources/test_parity.py` delivers through every source type and whose outcomes must agree.

Each `Case` is one source row, written as the text a CSV holds (`fields` override a valid row), with
one line (`rule`) naming the rule it exercises, the outcome the contract gives it (`expect`), and,
where a source truly cannot express it, why (`not_expressible`, never a silent skip). Every case
carries a unique token (`PX000Q`…) in its referenceId, or in its transactionType when the case is
about an empty reference, so its outcome can be found in every ledger whatever the source's own
row id.

Cases run in one of four configurations (`Config`): SOURCE_TIMEZONE and the days of the run. Two
zones, each with a gap (a local time skipped) and an overlap (a local time repeated) inside a run.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from ledger_backfill_dagster.entries.contract import (
    MAX_LEDGER_ID_BYTES,
    MAX_REFERENCE_ID_BYTES,
    MAX_TEXT_BYTES,
)
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    EMPTY,
    LATER_THAN_RUN_START,
    NONEXISTENT_LOCAL,
    UNPARSEABLE,
)

POSTED = "posted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"

# Every source type the suite delivers the corpus through.
CSV = "csv"
DB_TYPED = "db_typed"  # NUMERIC amounts, naive `timestamp` column, jsonb metadata
DB_TZ = "db_tz"  # the same, with a `timestamptz` column
DB_TEXT = "db_text"  # every column text (the key aside)
API_STRINGS = "api_strings"  # every value a JSON string
API_NUMBERS = "api_numbers"  # amounts, fxRate, amountMinor as JSON numbers; metadata as an object
SCB = "scb"  # the SCB feed's own field names
SOURCES = (CSV, DB_TYPED, DB_TZ, DB_TEXT, API_STRINGS, API_NUMBERS, SCB)
DATABASES = (DB_TYPED, DB_TZ, DB_TEXT)
HTTP = (API_STRINGS, API_NUMBERS, SCB)
TYPED = (DB_TYPED, DB_TZ)

# Why a source cannot carry a case, worded once.
CSV_ONLY = "a malformed CSV line has no equivalent in a table or a JSON page"
NUL_TEXT = "a PostgreSQL text column cannot hold a NUL character"
NUMERIC_SPELLING = (
    "a NUMERIC column holds a value, not a spelling: PostgreSQL refuses this text or keeps "
    "another value for it"
)
JSONB_ONLY = "a jsonb column holds JSON that PostgreSQL accepts, and it refuses this text"
INSTANT_ONLY = (
    "a timestamp column holds a time, not a text: PostgreSQL refuses this text or reads it its "
    "own way (`yesterday`, `2024-1-2`)"
)
TZ_GUESSES = (
    "a timestamptz column holds an instant: a local time skipped or repeated by DST is turned "
    "into one by PostgreSQL's guess before any reader sees it"
)
NAIVE_AMBIGUOUS = (
    "a naive timestamp column holds the local wall time: this instant falls in the hour DST "
    "repeats, which a wall time cannot tell apart"
)
OUTSIDE_WINDOWS = (
    "API and SCB serve the run's day windows: an entry outside every window is a broken page "
    "(docs/sources.md), never a row"
)
SCB_SEQUENCE = (
    "the SCB reader adds each entry's own `scbSequence` to its metadata (docs/sources.md), so a "
    "repeat of an entryId under another sequence never has identical content: a conflict"
)
JSON_TEXT_ONLY = "JSON text cannot carry bytes that are not UTF-8"


# Over 1 MiB of UTF-8 on several lines: JSON written with one member a line.
LONG_METADATA = json.dumps(
    {"note": "é" * 600_000, "lines": "a\nb", "emoji": "😀"}, ensure_ascii=False, indent=1
)


@dataclass(frozen=True)
class Config:
    """SOURCE_TIMEZONE and the run's days: one backfill per source type."""

    name: str
    zone: str
    days: tuple[str, ...]


MAIN = Config("main", "Europe/Berlin", ("2024-03-30", "2024-03-31", "2024-04-01"))
BERLIN_AUTUMN = Config("berlin_autumn", "Europe/Berlin", ("2024-10-26", "2024-10-27"))
NY_SPRING = Config("ny_spring", "America/New_York", ("2024-03-09", "2024-03-10"))
NY_AUTUMN = Config("ny_autumn", "America/New_York", ("2024-11-02", "2024-11-03"))
CONFIGS = (MAIN, BERLIN_AUTUMN, NY_SPRING, NY_AUTUMN)

ACCOUNTS = {
    "U1": "USD",
    "U2": "USD",
    "U3": "USD",
    "KÜNDE-😀-账户": "USD",
    "E1": "EUR",
    "J1": "JPY",
    "J2": "JPY",
    "B1": "BHD",
    "B2": "BHD",
    "G1": "XAU",
    "G2": "XAU",
}
LEDGER_ID = "PARITY"
# Reasons, exactly as the contract and the extract stage word them.
AMOUNT_FORMAT = "amount: not a plain decimal greater than zero"
AMOUNT_HUGE = "amount: more than 24 digits before the point"
AMOUNT_PLACES = "amount: more fractional digits than the currency's minor units"
MINOR_FORMAT = "amountMinor: not a whole number greater than zero"
MINOR_NO_UNIT = "amountMinor: the currency has no minor unit in ISO 4217"
MINOR_HUGE = "amountMinor: more than 24 digits before the point in major units"
MINOR_DIFFERS = "amount and amountMinor: state different values"
CURRENCY_UNKNOWN = "currencyCode: not an ISO 4217 currency"
CURRENCY_NOT_DEBIT = "currencyCode: differs from the debit account's currency"
ASSET_TYPE = "assetType: not one of fiat, cbdc, commodity, security"
TXN_EMPTY = "transactionType: empty"
LEDGER_LONG = f"ledgerId: longer than {MAX_LEDGER_ID_BYTES} bytes"
REFERENCE_LONG = f"referenceId: longer than {MAX_REFERENCE_ID_BYTES} bytes"
TXN_LONG = f"transactionType: longer than {MAX_TEXT_BYTES} bytes"
FX_FORMAT = "fxRate: not a plain decimal greater than zero"
FX_REQUIRED = "fxRate: required, the credit account is in another currency"
FX_SAME = "fxRate: given, but both accounts are in the same currency"
CREDIT_ZERO = "creditAmount: converts to zero in the credit currency"
DEBIT_EMPTY = "debitAccountId: empty"
CREDIT_EMPTY = "creditAccountId: empty"
DEBIT_UNKNOWN = "debitAccountId: no such account"
CREDIT_UNKNOWN = "creditAccountId: no such account"
SAME_ACCOUNT = "debitAccountId and creditAccountId are the same account"
NUL = "text fields: contain a NUL character"
META = "metadata: not a JSON object"
META_STORE = "metadata: holds text JSONB cannot store"


@dataclass
class Case:
    """One source row of the corpus."""

    name: str
    rule: str  # the rule it exercises: a reason of docs/contract.md, or a transformation rule
    fields: dict[str, str] = field(default_factory=dict)  # CSV text overriding a valid row
    expect: str | tuple[str, ...] = POSTED  # POSTED, DUPLICATE, CONFLICT or the exact reasons
    not_expressible: dict[str, str] = field(default_factory=dict)  # source → why
    native: dict[str, object] = field(default_factory=dict)  # JSON values the API/SCB send
    # source → (its outcome, why): a difference the suite asserts as documented, not hidden.
    differs: dict[str, tuple[str, str]] = field(default_factory=dict)
    raw: bytes | None = None  # a CSV line's exact bytes (CSV-level faults)
    config: Config = MAIN
    day: int = 0  # which of the config's days the default timestamp is on
    token: str = ""  # set by `corpus()`
    number: int = 0  # position in the corpus (set by `corpus()`): the row id of tables and APIs
    same_reference_as: str | None = None  # repeats another case's referenceId (and token)

    def values(self) -> dict[str, str]:
        """The row as CSV text: a valid row with the case's fields."""
        day = self.config.days[self.day % len(self.config.days)]
        minute = int(self.token[2:5]) % 60
        row = {
            "ledgerId": "",
            "debitAccountId": "U1",
            "creditAccountId": "U2",
            "amount": "10.25",
            "currencyCode": "USD",
            "assetType": "fiat",
            "transactionType": "PAYMENT",
            "referenceId": f"R-{self.token}",
            "timestampUtc": f"{day}T10:{minute:02d}:00Z",
            "fxRate": "",
            "metadata": "",
            "amountMinor": "",
        }
        row.update({k: v.replace("{T}", self.token) for k, v in self.fields.items()})
        return row


TOKEN_GROWTH = len("PX000Q") - len("{T}")  # bytes a token adds where "{T}" is written


def _bytes_long(prefix: str, size: int) -> str:
    return prefix + "x" * (size - len(prefix.encode()))


def _cases() -> list[Case]:
    usd_to_eur = {"creditAccountId": "E1"}
    jpy = {"debitAccountId": "J1", "creditAccountId": "J2", "currencyCode": "JPY"}
    bhd = {"debitAccountId": "B1", "creditAccountId": "B2", "currencyCode": "BHD"}
    xau = {"debitAccountId": "G1", "creditAccountId": "G2", "currencyCode": "XAU"}
    eur_to_jpy = {"debitAccountId": "E1", "creditAccountId": "J1", "currencyCode": "EUR"}
    numeric = {s: NUMERIC_SPELLING for s in TYPED}
    return (
        [
            # --- honest rows ---
            Case("a plain payment", "every rule met: posted as given"),
            Case("ledgerId given", "ledgerId kept", {"ledgerId": "SOVEREIGN"}),
            Case("empty ledgerId", "ledgerId: empty (never reached: LEDGER_ID fills it)"),
            Case(
                "JPY whole amount",
                "amounts in the currency's minor units",
                {**jpy, "amount": "1500"},
            ),
            Case(
                "BHD three places",
                "amounts in the currency's minor units",
                {**bhd, "amount": "1.234"},
            ),
            Case(
                "XAU 18 places",
                "currencies without an ISO minor unit",
                {**xau, "amount": "0.000000000000000001"},
            ),
            Case(
                "lower-case currency",
                "currencyCode trimmed and upper-cased",
                {"currencyCode": " usd "},
            ),
            Case("asset type upper-case", "assetType lower-cased", {"assetType": " CBDC "}),
            Case("empty asset type", "assetType empty means fiat", {"assetType": ""}),
            Case("account ids trimmed", "account ids trimmed", {"debitAccountId": " U3 "}),
            # --- amounts by value (issue 19) ---
            Case(
                "USD 10.000",
                "amount judged by value: trailing zeros are spelling",
                {"amount": "10.000"},
            ),
            Case("JPY 1500.00", "amount judged by value: JPY zeros", {**jpy, "amount": "1500.00"}),
            Case("USD 0.0050", AMOUNT_PLACES, {"amount": "0.0050"}, (AMOUNT_PLACES,)),
            Case("USD 10.001", AMOUNT_PLACES, {"amount": "10.001"}, (AMOUNT_PLACES,)),
            Case("JPY 100.5", AMOUNT_PLACES, {**jpy, "amount": "100.5"}, (AMOUNT_PLACES,)),
            Case("leading zeros", "amount judged by value: leading zeros", {"amount": "007.50"}),
            Case("amount with spaces", "amount trimmed", {"amount": "  10.50  "}),
            Case("amount negative", AMOUNT_FORMAT, {"amount": "-10.00"}, (AMOUNT_FORMAT,)),
            Case(
                "amount with plus", AMOUNT_FORMAT, {"amount": "+10.00"}, (AMOUNT_FORMAT,), numeric
            ),
            Case("amount exponent", AMOUNT_FORMAT, {"amount": "1e3"}, (AMOUNT_FORMAT,), numeric),
            Case(
                "amount negative exponent",
                AMOUNT_FORMAT,
                {"amount": "15e-1"},
                (AMOUNT_FORMAT,),
                numeric,
            ),
            Case(
                "amount thousands comma",
                AMOUNT_FORMAT,
                {"amount": "1,000.00"},
                (AMOUNT_FORMAT,),
                numeric,
            ),
            Case("amount NaN", AMOUNT_FORMAT, {"amount": "NaN"}, (AMOUNT_FORMAT,)),
            Case("amount Infinity", AMOUNT_FORMAT, {"amount": "Infinity"}, (AMOUNT_FORMAT,)),
            Case("amount zero", AMOUNT_FORMAT, {"amount": "0.00"}, (AMOUNT_FORMAT, CREDIT_ZERO)),
            Case("amount empty", AMOUNT_FORMAT, {"amount": ""}, (AMOUNT_FORMAT,)),
            Case("amount .50", AMOUNT_FORMAT, {"amount": ".50"}, (AMOUNT_FORMAT,), numeric),
            Case("amount 5.", AMOUNT_FORMAT, {"amount": "5."}, (AMOUNT_FORMAT,), numeric),
            Case(
                "amount Arabic-Indic", AMOUNT_FORMAT, {"amount": "١٢٣"}, (AMOUNT_FORMAT,), numeric
            ),
            Case("amount 25 digits", AMOUNT_HUGE, {"amount": "1" * 25}, (AMOUNT_HUGE,)),
            Case(
                "XAU 19 places",
                AMOUNT_PLACES,
                {**xau, "amount": "0.0000000000000000001"},
                (AMOUNT_PLACES,),
            ),
            # --- amountMinor ---
            Case(
                "amountMinor alone USD",
                "amountMinor / 10^exponent",
                {"amount": "", "amountMinor": "150"},
            ),
            Case(
                "amountMinor alone JPY",
                "amountMinor / 10^0",
                {**jpy, "amount": "", "amountMinor": "150"},
            ),
            Case(
                "amountMinor zero fraction",
                "amountMinor with a zero fraction",
                {"amount": "", "amountMinor": "150.0"},
            ),
            Case(
                "amountMinor agrees",
                "amount and amountMinor state one value",
                {"amount": "1.50", "amountMinor": "150"},
            ),
            Case(
                "amountMinor disagrees",
                MINOR_DIFFERS,
                {"amount": "1.50", "amountMinor": "151"},
                (MINOR_DIFFERS,),
            ),
            Case(
                "amountMinor negative",
                MINOR_FORMAT,
                {"amount": "", "amountMinor": "-150"},
                (MINOR_FORMAT,),
            ),
            Case(
                "amountMinor fraction",
                MINOR_FORMAT,
                {"amount": "", "amountMinor": "1.5"},
                (MINOR_FORMAT,),
            ),
            Case(
                "amountMinor exponent",
                MINOR_FORMAT,
                {"amount": "", "amountMinor": "1e3"},
                (MINOR_FORMAT,),
                numeric,
            ),
            Case(
                "amountMinor huge",
                MINOR_HUGE,
                {"amount": "", "amountMinor": "1" + "0" * 30},
                (MINOR_HUGE,),
            ),
            Case(
                "amountMinor XAU",
                MINOR_NO_UNIT,
                {**xau, "amount": "", "amountMinor": "5"},
                (MINOR_NO_UNIT,),
            ),
            # --- currencies ---
            Case(
                "unknown currency",
                CURRENCY_UNKNOWN,
                {"currencyCode": "ABC"},
                (CURRENCY_UNKNOWN, CURRENCY_NOT_DEBIT, FX_REQUIRED),
            ),
            Case(
                "currency XTS",
                CURRENCY_UNKNOWN,
                {"currencyCode": "XTS"},
                (CURRENCY_UNKNOWN, CURRENCY_NOT_DEBIT, FX_REQUIRED),
            ),
            Case(
                "currency not the debit's",
                CURRENCY_NOT_DEBIT,
                {"currencyCode": "EUR"},
                (CURRENCY_NOT_DEBIT, FX_REQUIRED),
            ),
            # --- FX ---
            Case(
                "FX EUR to JPY half-even",
                "credit side rounded half-even",
                {**eur_to_jpy, "amount": "1.00", "fxRate": "2.5"},
            ),
            Case(
                "FX EUR to JPY 162.3456",
                "credit side rounded half-even",
                {**eur_to_jpy, "amount": "10.05", "fxRate": "162.3456"},
            ),
            Case(
                "FX rate 1 same currency",
                "fxRate 1 allowed between one currency",
                {"fxRate": "1.000"},
            ),
            Case("FX missing", FX_REQUIRED, usd_to_eur, (FX_REQUIRED,)),
            Case("FX zero", FX_FORMAT, {**usd_to_eur, "fxRate": "0"}, (FX_FORMAT, CREDIT_ZERO)),
            Case("FX text", FX_FORMAT, {**usd_to_eur, "fxRate": "abc"}, (FX_FORMAT,), numeric),
            Case("FX same currency", FX_SAME, {"fxRate": "1.1"}, (FX_SAME,)),
            Case(
                "credit converts to zero",
                CREDIT_ZERO,
                {**eur_to_jpy, "amount": "0.01", "fxRate": "0.01"},
                (CREDIT_ZERO,),
            ),
            # --- accounts ---
            Case("empty debit", DEBIT_EMPTY, {"debitAccountId": ""}, (DEBIT_EMPTY,)),
            Case("empty credit", CREDIT_EMPTY, {"creditAccountId": " "}, (CREDIT_EMPTY,)),
            Case("unknown debit", DEBIT_UNKNOWN, {"debitAccountId": "NOPE"}, (DEBIT_UNKNOWN,)),
            Case("unknown credit", CREDIT_UNKNOWN, {"creditAccountId": "nope"}, (CREDIT_UNKNOWN,)),
            Case("same account", SAME_ACCOUNT, {"creditAccountId": "U1"}, (SAME_ACCOUNT,)),
            Case(
                "non-ASCII account with emoji",
                "account ids in any script",
                {"debitAccountId": "KÜNDE-😀-账户"},
            ),
            # --- types ---
            Case("unknown asset type", ASSET_TYPE, {"assetType": "crypto"}, (ASSET_TYPE,)),
            Case("empty transaction type", TXN_EMPTY, {"transactionType": "  "}, (TXN_EMPTY,)),
            Case(
                "transactionType JSON true",
                "a JSON true in a text field is its text",
                {"transactionType": "true"},
                native={"transactionType": True},
            ),
            Case(
                "transactionType JSON object",
                "a JSON object in a text field is its text",
                {"transactionType": '{"k":1}'},
                native={"transactionType": {"k": 1}},
            ),
            # --- bounds ---
            Case(
                "ledgerId 256 bytes",
                "ledgerId bound (at it)",
                {"ledgerId": _bytes_long("L-é", MAX_LEDGER_ID_BYTES)},
            ),
            Case(
                "ledgerId 257 bytes",
                LEDGER_LONG,
                {"ledgerId": _bytes_long("L-é", MAX_LEDGER_ID_BYTES + 1)},
                (LEDGER_LONG,),
            ),
            Case(
                "referenceId 2048 bytes",
                "referenceId bound (at it)",
                {"referenceId": _bytes_long("R-{T}-€", MAX_REFERENCE_ID_BYTES - TOKEN_GROWTH)},
            ),
            Case(
                "referenceId 2049 bytes",
                REFERENCE_LONG,
                {"referenceId": _bytes_long("R-{T}-€", MAX_REFERENCE_ID_BYTES + 1 - TOKEN_GROWTH)},
                (REFERENCE_LONG,),
            ),
            Case(
                "transactionType 1024 bytes",
                "transactionType bound (at it)",
                {"transactionType": _bytes_long("T-😀", MAX_TEXT_BYTES)},
            ),
            Case(
                "transactionType 1025 bytes",
                TXN_LONG,
                {"transactionType": _bytes_long("T-😀", MAX_TEXT_BYTES + 1)},
                (TXN_LONG,),
            ),
            # --- encodings, long and multi-line text ---
            Case(
                "referenceId in any script",
                "referenceId verbatim, any script",
                {"referenceId": "R-{T}-ünïcødé-✓-参照-😀"},
            ),
            Case(
                "referenceId keeps spaces",
                "referenceId verbatim, spaces kept",
                {"referenceId": "  R-{T}  "},
            ),
            Case(
                "multi-line transaction type",
                "text fields keep their line breaks",
                {"transactionType": "LINE 1\nLINE 2\r\nLINE 3"},
            ),
            Case(
                "long multi-line metadata",
                "metadata of any length and lines (past the CSV fast path's 1 MiB line)",
                {"metadata": LONG_METADATA},
            ),
            Case(
                "SQL in text",
                "text stored verbatim",
                {"transactionType": "'; DROP TABLE ledger_entries; --"},
            ),
            # --- metadata ---
            Case(
                "metadata exact numbers",
                "metadata numbers exact",
                {
                    "metadata": '{"a": 1.00000000000000000001, "b": 1.50, "c": 1E+2, "d": 12345678901234567890}'
                },
            ),
            Case(
                "metadata nested",
                "metadata nested objects",
                {"metadata": '{"a": {"b": {"c": [1, {"d": null}]}}, "e": true}'},
            ),
            Case(
                "metadata huge exponent",
                "metadata numbers within NUMERIC's range",
                {"metadata": '{"big": 1e400}'},
            ),
            Case(
                "metadata blank",
                "blank metadata is NULL",
                {"metadata": "   "},
                not_expressible={s: JSONB_ONLY for s in TYPED},
            ),
            Case("metadata array", META, {"metadata": "[1, 2]"}, (f"{META} (a JSON array)",)),
            Case("metadata number", META, {"metadata": "42"}, (f"{META} (a JSON number)",)),
            Case("metadata string", META, {"metadata": '"text"'}, (f"{META} (a JSON string)",)),
            Case("metadata boolean", META, {"metadata": "true"}, (f"{META} (a JSON boolean)",)),
            Case("metadata null", META, {"metadata": "null"}, (f"{META} (JSON null)",)),
            Case(
                "metadata invalid",
                META,
                {"metadata": "{bad"},
                (f"{META} (not valid JSON)",),
                {s: JSONB_ONLY for s in TYPED},
            ),
            Case(
                "metadata NaN",
                META,
                {"metadata": '{"x": NaN}'},
                (f"{META} (not valid JSON)",),
                {s: JSONB_ONLY for s in TYPED},
            ),
            Case(
                "metadata trailing text",
                META,
                {"metadata": '{"a": 1} extra'},
                (f"{META} (not valid JSON)",),
                {s: JSONB_ONLY for s in TYPED},
            ),
            Case(
                "metadata escaped NUL",
                META_STORE,
                {"metadata": '{"a": "x\\u0000y"}'},
                (f"{META_STORE} (\\u0000, a NUL character)",),
                {s: JSONB_ONLY for s in TYPED},
            ),
            Case(
                "metadata lone surrogate",
                META_STORE,
                {"metadata": '{"a": "\\ud800"}'},
                (f"{META_STORE} (an unpaired UTF-16 surrogate escape)",),
                {s: JSONB_ONLY for s in TYPED},
            ),
            Case(
                "metadata number out of range",
                META_STORE,
                {"metadata": '{"a": 1e131072}'},
                (
                    f"{META_STORE} (a number outside NUMERIC's range (131,072 digits before the point, 16,383 after))",
                ),
                {s: JSONB_ONLY for s in TYPED},
            ),
            # --- NUL ---
            Case(
                "raw NUL in a text field",
                NUL,
                {"transactionType": "PAY\x00MENT"},
                (NUL,),
                {s: NUL_TEXT for s in DATABASES},
            ),
            # --- references ---
            Case(
                "empty referenceId",
                "referenceId: empty (never reached: a reference is generated)",
                {"referenceId": "", "transactionType": "GEN-{T}"},
            ),
            Case(
                "first of a reference",
                "(ledger_id, reference_id) unique: first use posts",
                {"referenceId": "R-DUP-{T}"},
            ),
            Case(
                "identical repeat",
                "an identical repeat of a reference is a duplicate",
                {"referenceId": "R-DUP-{T}"},
                DUPLICATE,
                same_reference_as="first of a reference",
                differs={SCB: (CONFLICT, SCB_SEQUENCE)},
            ),
            Case(
                "changed repeat",
                "a changed repeat of a reference is a conflict",
                {"referenceId": "R-DUP-{T}", "amount": "11.00"},
                CONFLICT,
                same_reference_as="first of a reference",
            ),
            # --- timestamps (extract-stage reasons) ---
            Case("timestamp empty", EMPTY, {"timestampUtc": ""}, (EMPTY,)),
            Case(
                "timestamp words",
                UNPARSEABLE,
                {"timestampUtc": "yesterday"},
                (UNPARSEABLE,),
                {s: INSTANT_ONLY for s in TYPED},
            ),
            Case(
                "timestamp 31/02/2024",
                UNPARSEABLE,
                {"timestampUtc": "31/02/2024"},
                (UNPARSEABLE,),
                {s: INSTANT_ONLY for s in TYPED},
            ),
            Case(
                "timestamp not ISO shape",
                UNPARSEABLE,
                {"timestampUtc": "2024-3-31T10:00:00Z"},
                (UNPARSEABLE,),
                {s: INSTANT_ONLY for s in TYPED},
            ),
            Case(
                "timestamp hour 25",
                UNPARSEABLE,
                {"timestampUtc": "2024-03-31T25:00:00Z"},
                (UNPARSEABLE,),
                {s: INSTANT_ONLY for s in TYPED},
            ),
            Case(
                "timestamp before start",
                BEFORE_START_DATE,
                {"timestampUtc": "2023-12-31T23:59:59Z"},
                (BEFORE_START_DATE,),
                {s: OUTSIDE_WINDOWS for s in HTTP},
            ),
            Case(
                "timestamp in the future",
                LATER_THAN_RUN_START,
                {"timestampUtc": "2999-01-01T00:00:00Z"},
                (LATER_THAN_RUN_START,),
                {s: OUTSIDE_WINDOWS for s in HTTP},
            ),
            Case(
                "timestamp fraction",
                "fractional seconds kept to the microsecond",
                {"timestampUtc": "2024-03-31T10:00:00.123456Z"},
            ),
            Case(
                "timestamp offset",
                "an offset converted to UTC",
                {"timestampUtc": "2024-03-31T01:30:00+05:30"},
            ),
            Case(
                "timestamp date only",
                "a date alone is local midnight",
                {"timestampUtc": "2024-04-01"},
            ),
            Case(
                "naive near midnight",
                "a naive time in SOURCE_TIMEZONE, previous UTC day",
                {"timestampUtc": "2024-04-01T00:30:00"},
            ),
        ]
        + _dst_cases()
        + _csv_only_cases()
    )


def _dst_cases() -> list[Case]:
    """A gap, an overlap, normal naive times and offsets, in both zones, each inside its run."""
    tz = {DB_TZ: TZ_GUESSES}
    cases = []
    for config, gap, overlap, before, after, offset_in_overlap in (
        (MAIN, "2024-03-31T02:30:00", None, "2024-03-31T01:59:59", "2024-03-31T03:30:00", None),
        (
            BERLIN_AUTUMN,
            None,
            "2024-10-27T02:30:00",
            "2024-10-27T00:30:00",
            "2024-10-27T03:30:00",
            "2024-10-27T02:30:00+01:00",
        ),
        (
            NY_SPRING,
            "2024-03-10T02:30:00",
            None,
            "2024-03-09T22:00:00",
            "2024-03-10T03:30:00",
            None,
        ),
        (
            NY_AUTUMN,
            None,
            "2024-11-03T01:30:00",
            "2024-11-02T21:00:00",
            "2024-11-03T02:30:00",
            "2024-11-03T01:30:00-04:00",
        ),
    ):
        if gap:
            cases.append(
                Case(
                    f"{config.name} gap",
                    NONEXISTENT_LOCAL,
                    {"timestampUtc": gap},
                    (NONEXISTENT_LOCAL,),
                    tz,
                    config=config,
                )
            )
        if overlap:
            cases.append(
                Case(
                    f"{config.name} overlap",
                    NONEXISTENT_LOCAL,
                    {"timestampUtc": overlap},
                    (NONEXISTENT_LOCAL,),
                    tz,
                    config=config,
                )
            )
        cases.append(
            Case(
                f"{config.name} naive before the change",
                "a naive time in SOURCE_TIMEZONE",
                {"timestampUtc": before},
                config=config,
            )
        )
        cases.append(
            Case(
                f"{config.name} naive after the change",
                "a naive time in SOURCE_TIMEZONE",
                {"timestampUtc": after},
                config=config,
            )
        )
        cases.append(
            Case(
                f"{config.name} offset given",
                "an offset converted to UTC",
                {"timestampUtc": (gap or overlap) + "Z"},
                config=config,
                day=1,
            )
        )
        if offset_in_overlap:
            cases.append(
                Case(
                    f"{config.name} offset inside the repeated hour",
                    "an offset decides which of the repeated hours",
                    {"timestampUtc": offset_in_overlap},
                    not_expressible={DB_TYPED: NAIVE_AMBIGUOUS},
                    config=config,
                )
            )
        cases.append(
            Case(
                f"{config.name} date only",
                "a date alone is local midnight",
                {"timestampUtc": config.days[1]},
                config=config,
            )
        )
    return cases


def _csv_only_cases() -> list[Case]:
    """CSV-level faults: malformed lines, which no table or JSON page can hold."""
    only = {s: CSV_ONLY for s in SOURCES if s != CSV}
    utf8 = {**only, **{s: JSON_TEXT_ONLY for s in HTTP}}
    return [
        Case(
            "too few fields",
            "malformed line: wrong field count",
            raw=b"PARITY,U1,U2,1.00,USD,R-{T}\n",
            expect=("malformed line: wrong field count: expected 12, found 6",),
            not_expressible=only,
        ),
        Case(
            "stray quote",
            "malformed line: broken quoting",
            raw=b'PARITY,U1,U2,1.00,USD,fiat,PAY"MENT,R-{T},2024-03-30T10:00:00Z,,,\n',
            expect=("malformed line: broken quoting (a quote out of place)",),
            not_expressible=only,
        ),
        Case(
            "invalid UTF-8",
            "malformed line: invalid UTF-8",
            raw=b"PARITY,U1,U2,1.00,USD,fiat,P\xffY,R-{T},2024-03-30T10:00:00Z,,,\n",
            expect=("malformed line: invalid UTF-8",),
            not_expressible=utf8,
        ),
    ]


def corpus() -> list[Case]:
    """Every case with its token; repeats of a reference share the first case's token."""
    cases = _cases()
    by_name = {c.name: c for c in cases}
    assert len(by_name) == len(cases), "case names must be unique"
    for number, case in enumerate(cases):
        case.number = number
        case.token = f"PX{number:03d}Q"
        if case.raw is not None:
            case.raw = case.raw.replace(b"{T}", case.token.encode())
    for case in cases:
        if case.same_reference_as:
            case.token = by_name[case.same_reference_as].token
    return cases


def csv_line(values: dict[str, str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([values[f] for f in CSV_HEADER])
    return buffer.getvalue()


CSV_HEADER = (*CANONICAL_FIELDS, "amountMinor")
