"""The Transform Service (the seed's step 2): staged source rows → candidate ledger entries.

Applies the seed's transformation rules 1–6 (account and transaction type mapping, amount and
currency normalization, defaults, reference id generation, metadata extraction) column by column.
It never rejects anything itself: rows that cannot be normalized keep what they had, and the
contract (`contract.py`) says why they fail.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from ledger_backfill_dagster.entries.amounts import (
    PLAIN_DECIMAL,
    from_minor_units,
    integer_digits,
    normalized,
    object_values,
)
from ledger_backfill_dagster.entries.contract import (
    MAX_INTEGER_DIGITS,
    METADATA_NOT_JSON,
    METADATA_NUL,
    METADATA_NUMBER_RANGE,
    METADATA_SURROGATE,
    METADATA_TOO_DEEP,
)
from ledger_backfill_dagster.entries.currencies import convert
from ledger_backfill_dagster.entries.row_identity import nth_occurrence_reference, source_row_keys
from ledger_backfill_dagster.entries.timestamps import unplaced_reasons
from ledger_backfill_dagster.lib import exact_json
from ledger_backfill_dagster.lib.user_files import UserFileError, read_user_csv

GENERATED_REFERENCE_PREFIX = "BACKFILL-"


@dataclass(frozen=True)
class TransformRules:
    default_ledger_id: str = "MASTER"
    account_map: dict[str, str] = field(default_factory=dict)
    transaction_type_map: dict[str, str] = field(default_factory=dict)
    account_currencies: dict[str, str] = field(default_factory=dict)


def load_mapping(path: str | None, setting: str = "mapping file") -> dict[str, str]:
    """A two-column CSV (with a header) mapping source ids to ledger ids (ACCOUNT_MAP_FILE,
    TRANSACTION_TYPE_MAP_FILE: `setting` names which in errors, with the file and line)."""
    if not path:
        return {}
    mapping: dict[str, str] = {}
    for line, row in read_user_csv(setting, path)[1:]:
        if not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UserFileError(f"{setting} {path}: line {line}: expected sourceId,ledgerId")
        mapping[row[0].strip()] = row[1].strip()
    return mapping


def optional_field(staged: pd.DataFrame, name: str) -> pd.Series:
    """A field only some sources give (`sources.layout.OPTIONAL_FIELDS`); all missing in a frame
    staged before the field existed."""
    if name in staged.columns:
        return staged[name]
    return pd.Series(pd.NA, index=staged.index, dtype="string")


def _text(values: pd.Series) -> pd.Series:
    return values.astype("string").fillna("")


def _trimmed(values: pd.Series) -> pd.Series:
    return _text(values).str.strip()


def transform(staged: pd.DataFrame, rules: TransformRules) -> pd.DataFrame:
    """Map a staged partition onto the contract's columns (see `LedgerEntrySource`)."""
    out = pd.DataFrame(index=pd.RangeIndex(len(staged)))
    for column in ("source_row_id", "line_number"):
        out[column] = pd.array(staged[column].to_numpy(), dtype="Int64")
    out["source_file"] = staged["source_file"].astype("string").to_numpy()

    ledger = _trimmed(staged["ledgerId"]).to_numpy()
    out["ledger_id"] = pd.array(ledger, dtype="string")
    out.loc[out["ledger_id"] == "", "ledger_id"] = rules.default_ledger_id

    for target, source in (
        ("debit_account_id", "debitAccountId"),
        ("credit_account_id", "creditAccountId"),
    ):
        ids = pd.Series(_trimmed(staged[source]).to_numpy(), dtype="string")
        out[target] = (
            ids.map(rules.account_map).fillna(ids).astype("string") if rules.account_map else ids
        )

    out["currency_code"] = pd.Series(
        _trimmed(staged["currencyCode"]).str.upper().to_numpy(), dtype="string"
    )
    out["amount"], out["amount_minor"], out["amount_minor_value"] = _amounts(
        staged, out["currency_code"]
    )
    asset = pd.Series(_trimmed(staged["assetType"]).str.lower().to_numpy(), dtype="string")
    out["asset_type"] = asset.mask(asset == "", "fiat")
    txn = pd.Series(_trimmed(staged["transactionType"]).to_numpy(), dtype="string")
    out["transaction_type"] = (
        txn.map(rules.transaction_type_map).fillna(txn).astype("string")
        if rules.transaction_type_map
        else txn
    )
    # `.array`, not `.to_numpy()`: the latter makes a Python Timestamp object per row.
    out["timestamp_utc"] = pd.Series(staged["timestamp_utc"].array, index=out.index).astype(
        "datetime64[us, UTC]"
    )
    # A reader that keeps a row without a timestamp in its day (API, SCB) leaves the contract
    # to say why, in the words a CSV row gets for the same text (issue 20).
    out["timestamp_problem"] = unplaced_reasons(staged["timestampUtc"], out["timestamp_utc"])
    fx = pd.Series(_trimmed(staged["fxRate"]).to_numpy(), dtype="string")
    out["fx_rate"] = fx.mask(fx == "")

    out["metadata"], out["metadata_problem"] = _metadata(staged)

    currencies = pd.Series(rules.account_currencies, dtype="string")
    out["debit_account_currency"] = out["debit_account_id"].map(currencies).astype("string")
    out["credit_account_currency"] = out["credit_account_id"].map(currencies).astype("string")
    out["credit_amount"] = _credit_amounts(out)
    out["credit_currency_code"] = out["credit_account_currency"]

    reference = pd.Series(_text(staged["referenceId"]).to_numpy(), dtype="string")
    out["reference_generated"] = (reference.str.strip() == "").to_numpy()
    out["reference_id"] = reference
    positions = np.flatnonzero(out["reference_generated"].to_numpy())
    if len(positions):
        out["reference_id"] = out["reference_id"].astype(object)
        out.iloc[positions, _position(out, "reference_id")] = generated_references(
            out.iloc[positions]
        )
        out["reference_id"] = out["reference_id"].astype("string")
    keys, occurrence = source_row_keys(staged)
    out["source_row_key"] = pd.array(keys, dtype="string")
    out["source_row_occurrence"] = pd.array(occurrence, dtype="Int64")
    repeats = np.flatnonzero(out["reference_generated"].to_numpy() & (occurrence > 1))
    if len(repeats):  # identical rows without a reference are distinct payments: distinct ids
        position = _position(out, "reference_id")
        out.iloc[repeats, position] = [
            nth_occurrence_reference(reference, int(k))
            for reference, k in zip(
                out["reference_id"].to_numpy()[repeats], occurrence[repeats], strict=True
            )
        ]
    return out


def _position(frame: pd.DataFrame, column: str) -> int:
    """The position of one of the frame's columns (their names are unique)."""
    position = frame.columns.get_loc(column)
    if not isinstance(position, int):
        raise TypeError(f"column {column!r} is not unique")
    return position


def _amounts(staged: pd.DataFrame, currency: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(amount as the ledger stores it, amountMinor as given or NA, amountMinor's value or NA).

    The amount is judged by value (issue 19): `10.000` USD becomes `10.00`, JPY `1500.00`
    `1500`; a value finer than the minor unit stays as given for the contract to refuse. A row
    without an amount takes amountMinor's value (NA if it has none: its rules say why)."""
    given = pd.Series(_trimmed(staged["amount"]).to_numpy(), dtype="string")
    amount = normalized(given, currency)
    raw_minor = optional_field(staged, "amountMinor")
    if not raw_minor.notna().any():  # most sources: no minor units at all
        absent = pd.Series(pd.NA, index=amount.index, dtype="string")
        return amount, absent, absent.copy()
    minor = pd.Series(_trimmed(raw_minor).to_numpy(), dtype="string")
    minor = minor.mask(minor == "")
    minor_value = from_minor_units(minor, currency)
    from_minor = _flag((given == "") & minor.notna()).to_numpy()
    if from_minor.any():
        # Too large a value is amountMinor's to refuse, by its own name: the row gave no amount.
        fits = (integer_digits(minor_value) <= MAX_INTEGER_DIGITS).to_numpy()
        amount = amount.mask(from_minor, minor_value.where(fits))
    return amount, minor, minor_value


def _metadata(staged: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Metadata must be empty or a JSON object; columns no layout names are folded into it.

    Returns (metadata as JSON text or NA, problem or NA). Rows that carry metadata are parsed
    one by one (json has no vectorized parser), numbers as exact Decimals; so are extra columns
    that might hold something JSONB refuses, since that must make the row a reject, never fail
    the partition's insert. A row's own text is kept as written, extra columns alone too; a
    merged document is written from the exact parse (`exact_json`)."""
    text = pd.Series(staged["metadata"].astype("string").to_numpy(), dtype="string")
    extras = pd.Series(staged["extra_columns"].astype("string").to_numpy(), dtype="string")
    given = _flag(text.str.strip() != "").to_numpy()
    values = extras.copy()
    problems = pd.Series(pd.NA, index=text.index, dtype="string")
    doubtful = _flag(
        extras.str.contains(_MAYBE_UNSTORABLE) | (extras.str.len() > exact_json.MAX_SCALE)
    ).to_numpy()
    rows = np.flatnonzero(given | doubtful)
    if not len(rows):
        return values, problems
    # Only escapes can smuggle in text JSONB refuses, so only escaped text is searched for it.
    text_escaped = _flag(text.str.contains("\\u", regex=False)).to_numpy()
    extras_escaped = _flag(extras.str.contains("\\u", regex=False)).to_numpy()
    own = object_values(text)
    folded = object_values(extras)
    parsed = [
        _row_metadata(
            own[row] if given[row] else None, text_escaped[row], folded[row], extras_escaped[row]
        )
        for row in rows
    ]
    values.iloc[rows] = [value for value, _ in parsed]
    problems.iloc[rows] = [problem for _, problem in parsed]
    return values, problems


# What JSON text must hold for JSONB to refuse it: an escaped NUL or UTF-16 surrogate, or a
# number with an exponent (one without needs over MAX_SCALE characters). Staged text is UTF-8,
# which cannot hold a raw surrogate. Plain enough for Arrow's RE2 and Python's re alike.
_MAYBE_UNSTORABLE = r"\\u(?:0000|[dD][89a-fA-F])|[0-9][eE]"


def _row_metadata(
    text: str | None, text_escaped: bool, extras: str | None, extras_escaped: bool
) -> tuple[object, object]:
    """(metadata, NA) or (NA, problem) for one row: its own metadata text, the JSON object of
    its extra columns, or both merged (the row's own keys win)."""
    document: dict | None = None
    if text is not None:  # exact numbers only if they are to be written again, merged
        document, problem = _parse_object(text, text_escaped, exact=extras is not None)
        if problem is not None:
            return pd.NA, problem
    if extras is None:
        return text, pd.NA
    columns, problem = _parse_object(extras, extras_escaped, exact=text is not None)
    if problem is not None:
        return pd.NA, problem
    if document is None:
        return extras, pd.NA
    assert columns is not None  # _parse_object gives an object wherever it names no problem
    columns.update(document)
    try:
        return exact_json.dumps(columns), pd.NA
    except RecursionError:  # parsed at the very edge of Python's depth, one frame short here
        return pd.NA, METADATA_TOO_DEEP


def _flag(values: pd.Series) -> pd.Series:
    return values.fillna(False).astype(bool)


_JSON_KINDS = {
    list: "a JSON array",
    str: "a JSON string",
    exact_json.UnstorableNumber: "a JSON number",
    Decimal: "a JSON number",
    int: "a JSON number",
    float: "a JSON number",
    bool: "a JSON boolean",
    type(None): "JSON null",
}


def _parse_object(
    text: str, has_escape: bool, exact: bool = True
) -> tuple[dict | None, str | None]:
    """(the object, None) or (None, what is wrong with it). Numbers are exact Decimals if
    `exact` (see `exact_json.loads`)."""
    try:
        document, unstorable_number = exact_json.loads(text, exact=exact)
        if not isinstance(document, dict):
            return None, _JSON_KINDS.get(type(document), "not an object")
        if has_escape:  # only escapes can smuggle in what JSONB refuses
            strings = list(_strings(document))
            if any("\x00" in value for value in strings):
                return None, METADATA_NUL
            if any(_SURROGATE.search(value) for value in strings):
                return None, METADATA_SURROGATE
        if unstorable_number:
            return None, METADATA_NUMBER_RANGE
    except RecursionError:  # PostgreSQL would take it, but we could not check it
        return None, METADATA_TOO_DEEP
    except ValueError:
        return None, METADATA_NOT_JSON
    return document, None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _credit_amounts(out: pd.DataFrame) -> pd.Series:
    """The credit side: the amount itself, or amount × fxRate rounded half-even to the credit
    currency's minor units when the accounts' currencies differ. Exact Decimal arithmetic."""
    credit = out["amount"].astype("string").mask(out["credit_account_currency"].isna())
    crossing = _flag(
        out["credit_account_currency"].notna()
        & (out["credit_account_currency"] != out["currency_code"])
        & out["fx_rate"].notna()
    )
    positions = np.flatnonzero(crossing.to_numpy())
    if len(positions):
        rows = out.iloc[positions][["amount", "fx_rate", "credit_account_currency"]]
        # pandas takes an ExtensionArray here; pandas-stubs 2.3 only a Series or a scalar.
        credit.iloc[positions] = pd.array(  # type: ignore[call-overload]
            [
                _convert(amount, rate, currency)
                for amount, rate, currency in rows.itertuples(index=False)
            ],
            dtype="string",
        )
    return credit.astype("string")


def _convert(amount: object, rate: object, currency: str) -> object:
    if not (isinstance(amount, str) and isinstance(rate, str)):
        return pd.NA
    if not (re.fullmatch(PLAIN_DECIMAL, amount) and re.fullmatch(PLAIN_DECIMAL, rate)):
        return pd.NA
    try:
        return format(convert(Decimal(amount), Decimal(rate), currency), "f")
    except InvalidOperation:
        return pd.NA


REFERENCE_FIELDS = (
    "ledger_id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "currency_code",
    "asset_type",
    "transaction_type",
    "timestamp_utc",
    "fx_rate",
    "metadata",
)


def generated_references(rows: pd.DataFrame) -> np.ndarray:
    """`generated_reference` for many rows at once: each column's canonical JSON text is worked
    out once per distinct value (a factorize, not a loop over rows) and only the SHA-256 runs
    per row. Gives exactly the ids `generated_reference` gives (a test holds them equal)."""
    canonical = {
        "amount": _canonical_decimal,
        "fx_rate": _canonical_decimal,
        "metadata": _canonical_json,
    }
    parts = []
    for name in REFERENCE_FIELDS:
        if name == "timestamp_utc":
            parts.append(_json_iso_timestamps(rows[name]))
        else:
            parts.append(_json_text(rows[name], canonical.get(name)))
    payload = parts[0]
    for part in parts[1:]:
        payload = payload + ", " + part
    return np.array(
        [
            GENERATED_REFERENCE_PREFIX + hashlib.sha256(f"[{p}]".encode()).hexdigest()[:32]
            for p in payload
        ],
        dtype=object,
    )


def _json_text(values: pd.Series, canonical: Callable[[object], object] | None) -> np.ndarray:
    """Each row's value as `generated_reference` encodes it, computed once per distinct value.
    (A dict, not `pd.factorize`: pandas' string hash table ends strings at a NUL, so "" and
    "\\x00" would share a code.)"""
    cache: dict[object, str] = {}
    encoded = []
    for value in values.to_numpy(dtype=object):
        text = cache.get(value)
        if text is None:
            text = cache[value] = _encode(value, canonical)
        encoded.append(text)
    return np.array(encoded, dtype=object)


def _encode(value: object, canonical: Callable[[object], object] | None) -> str:
    # As in `generated_reference`: a missing text field is null, but the canonical forms turn a
    # missing fxRate or metadata into None, which is then written as the string "None". Kept so
    # that ids stay what the first release generated.
    if canonical:
        value = canonical(value)
    return "null" if value is pd.NA else json.dumps(str(value), ensure_ascii=False)


def _json_iso_timestamps(values: pd.Series) -> np.ndarray:
    """'"' + pd.Timestamp.isoformat() + '"' per row, in C: whole seconds unless there is a
    fraction (then microseconds), always '+00:00'; a missing time is the empty string."""
    raw = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    seconds = np.datetime_as_string(raw, unit="s").astype(object)
    micros = np.datetime_as_string(raw, unit="us").astype(object)
    fractional = (raw.astype("int64") % 1_000_000) != 0
    text = np.where(fractional, micros, seconds)
    return np.where(np.isnat(raw), '""', '"' + text + '+00:00"').astype(object)


def generated_reference(row: Any) -> str:
    """A reference id derived only from the row's content, so the same row always gets the same
    id and a re-run posts nothing twice. Prefixed BACKFILL- like the seed's examples. This is
    the definition; `generated_references` computes the same for a whole frame. `row` is any
    row with the entry's fields as attributes (a frame's `itertuples()` row, a Series)."""
    fields = [
        row.ledger_id,
        row.debit_account_id,
        row.credit_account_id,
        _canonical_decimal(row.amount),
        row.currency_code,
        row.asset_type,
        row.transaction_type,
        pd.Timestamp(row.timestamp_utc).isoformat() if row.timestamp_utc is not pd.NaT else "",
        _canonical_decimal(row.fx_rate),
        _canonical_json(row.metadata),
    ]
    payload = json.dumps([None if f is pd.NA else str(f) for f in fields], ensure_ascii=False)
    return GENERATED_REFERENCE_PREFIX + hashlib.sha256(payload.encode()).hexdigest()[:32]


def _canonical_decimal(value: object) -> object:
    if value is pd.NA or value is None:
        return None
    text = str(value)
    if not re.fullmatch(PLAIN_DECIMAL, text.strip()):
        # Not an amount the contract admits (the row is rejected): kept as written, never
        # expanded (`1e999999999` written out would be a billion digits).
        return text
    # In a context as wide as the text: the default 28 digits would round two XAU amounts
    # that differ in their 29th digit to one id.
    return format(Decimal(text).normalize(Context(prec=max(28, len(text)))), "f")


def _canonical_json(value: object) -> object:
    if value is pd.NA or value is None:
        return None
    try:
        return json.dumps(json.loads(str(value)), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        return str(value)
