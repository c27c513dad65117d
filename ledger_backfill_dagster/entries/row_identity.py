"""What a source row *is*, independent of the settings it is read with and of where it sits.

A source row's identity (`source_row_key`) must survive a re-export that inserts or reorders
rows, and must not change when a setting that shapes the posted entry changes (LEDGER_ID,
SOURCE_TIMEZONE, ACCOUNT_MAP_FILE, TRANSACTION_TYPE_MAP_FILE): otherwise the same row is posted
again under a new identity. So the key is built from the row's raw values, before any default or
mapping, and never from its line number:

- a row with a referenceId is (its raw ledgerId, its referenceId, its timestamp as below);
- a row without one is its raw content (ledgerId as given, accounts before mapping, amount and
  fxRate by value, currency, asset and transaction type as given, metadata and extra columns,
  and the timestamp as an instant when it carries an offset, else as the local time it wrote);

plus, for both, its occurrence among identical rows of the partition (ordered by source
position), so two identical payments without a reference are two rows, not one row seen twice.

Cosmetic differences (surrounding spaces, `10.5` against `10.50`, metadata key order, an
instant written with another offset) do not change the key. The posting stage looks every row
up by this key before it inserts anything (`sql/queries/posting/mark_known_rows.sql`).
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Context, Decimal

import numpy as np
import pandas as pd

from ledger_backfill_dagster.entries.amounts import (
    PLAIN_DECIMAL,
    from_minor_units,
    object_values,
)

# An ISO 8601 text that states its own offset (Z, ±hh, ±hhmm, ±hh:mm) names an instant; any
# other is a local time whose instant depends on SOURCE_TIMEZONE.
_HAS_OFFSET = re.compile(r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)$")
_PLAIN_DECIMAL = re.compile(PLAIN_DECIMAL)
_DATE_ONLY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


_json_string = json.encoder.encode_basestring  # json.dumps' own encoder (ensure_ascii=False)


def _json_list(texts: list[str]) -> str:
    """json.dumps(texts, ensure_ascii=False) for a list of strings, at a fraction of its cost."""
    return "[" + ", ".join(map(_json_string, texts)) + "]"


def _text(values: pd.Series) -> np.ndarray:
    return values.astype("string").fillna("").to_numpy(dtype=object)


def _value(text: str) -> str:
    """A plain decimal by value (`10.50` → `10.5`); anything else as written (an exponent is
    never expanded: `1e999999999` would be a billion digits)."""
    if not _PLAIN_DECIMAL.fullmatch(text):
        return text
    # As wide as the text: the default 28 digits would round two values apart into one key.
    return format(Decimal(text).normalize(Context(prec=max(28, len(text)))), "f")


def _json_key(text: str) -> str:
    """JSON with sorted keys and every number kept exactly as a number's value; else the text."""
    if not text.strip():
        return ""
    try:
        document = json.loads(text, parse_float=_Number, parse_int=_Number)
    except (ValueError, RecursionError):
        return text
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        return text


class _Number(str):
    """A JSON number kept as its value's text, marked so it never equals a JSON string."""

    def __new__(cls, text: str) -> _Number:
        return super().__new__(cls, "\u0000n:" + _value(text))


def _utc_texts(parsed: pd.Series) -> np.ndarray:
    """Each instant as `YYYY-MM-DDTHH:MM:SS.ffffff` in UTC (None where there is none): numpy's
    formatting in C, the same text pandas' strftime gave, which cost a quarter of the
    transform stage; years outside 1000-9999, which the two write differently, go through
    strftime as before."""
    utc = parsed.dt.tz_convert("UTC")
    values = utc.to_numpy(dtype="datetime64[us]")
    texts = np.datetime_as_string(values, unit="us").astype(object)
    texts[np.isnat(values)] = None
    years = utc.dt.year.to_numpy(dtype="float64", na_value=np.nan)
    odd = (years < 1000) | (years > 9999)
    if odd.any():
        old = utc[odd].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").to_numpy(object)
        texts[odd] = [t if isinstance(t, str) else None for t in old]
    return texts


def _timestamp_keys(raw: np.ndarray, parsed: pd.Series) -> list[str]:
    instants = _utc_texts(parsed)
    keys = []
    for text, instant in zip(raw, instants, strict=True):
        text = text.strip()
        if _HAS_OFFSET.search(text) and not _DATE_ONLY.match(text) and isinstance(instant, str):
            keys.append("at:" + instant)
        else:
            keys.append("local:" + text.replace(" ", "T", 1))
    return keys


def source_row_keys(staged: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(source_row_key, occurrence) for each staged row, in the frame's order.

    `staged` holds the readers' raw columns (`sources.base.STAGED_SCHEMA`), one or more whole
    partitions, ordered by source position within each partition."""
    ledger = [t.strip() for t in _text(staged["ledgerId"])]
    reference = _text(staged["referenceId"])
    given = np.array([bool(r.strip()) for r in reference], dtype=bool)
    material = np.empty(len(staged), dtype=object)
    if given.any():
        rows = np.flatnonzero(given)
        # The time too (as written, so SOURCE_TIMEZONE does not change it): a repeat of the
        # reference on another day is another source row (a conflict), not this one.
        stamps = _timestamp_keys(
            _text(staged["timestampUtc"])[rows],
            pd.Series(staged["timestamp_utc"].array[rows]).astype("datetime64[us, UTC]"),
        )
        material[rows] = [
            _json_list(["ref", ledger[i], reference[i], stamp])
            for i, stamp in zip(rows, stamps, strict=True)
        ]
    if (~given).any():
        rows = np.flatnonzero(~given)
        columns = {
            "debit": _text(staged["debitAccountId"]),
            "credit": _text(staged["creditAccountId"]),
            "amount": _text(staged["amount"]),
            "currency": _text(staged["currencyCode"]),
            "asset": _text(staged["assetType"]),
            "type": _text(staged["transactionType"]),
            "fx": _text(staged["fxRate"]),
            "metadata": _text(staged["metadata"]),
            "extra": _text(staged["extra_columns"]),
        }
        by_minor = _minor_only_amounts(staged, rows)
        times = _timestamp_keys(
            _text(staged["timestampUtc"])[rows],
            pd.Series(staged["timestamp_utc"].array[rows]).astype("datetime64[us, UTC]"),
        )
        material[rows] = [
            _json_list(
                [
                    "row",
                    ledger[i],
                    columns["debit"][i].strip(),
                    columns["credit"][i].strip(),
                    by_minor.get(int(i)) or _value(columns["amount"][i].strip()),
                    columns["currency"][i].strip().upper(),
                    columns["asset"][i].strip().lower(),
                    columns["type"][i].strip(),
                    time,
                    _value(columns["fx"][i].strip()),
                    _json_key(columns["metadata"][i]),
                    _json_key(columns["extra"][i]),
                ]
            )
            for i, time in zip(rows, times, strict=True)
        ]
    # A dict, not pd.factorize: pandas' string hash ends a string at a NUL character.
    seen: dict[str, int] = {}
    occurrence = np.empty(len(staged), dtype=np.int64)
    keys = np.empty(len(staged), dtype=object)
    for i, text in enumerate(material):
        k = seen.get(text, 0) + 1
        seen[text] = k
        occurrence[i] = k
        keys[i] = hashlib.sha256(f"{text}#{k}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return keys, occurrence


def _minor_only_amounts(staged: pd.DataFrame, rows: np.ndarray) -> dict[int, str]:
    """For those of `rows` that give no amount but an amountMinor: the amount by value that it
    states in major units, so a re-export spelling the amount the other way is the same row
    (minor units that state no amount are kept as written, marked apart from any decimal)."""
    if "amountMinor" not in staged.columns or not len(rows):
        return {}
    if not staged["amountMinor"].notna().any():
        return {}
    minor = pd.Series(_text(staged["amountMinor"])[rows], dtype="string").str.strip()
    amount = pd.Series(_text(staged["amount"])[rows], dtype="string").str.strip()
    only_minor = ((amount == "") & (minor != "")).to_numpy()
    if not only_minor.any():
        return {}
    currency = pd.Series(_text(staged["currencyCode"])[rows], dtype="string").str.strip()
    values = from_minor_units(minor[only_minor], currency[only_minor].str.upper())
    raw = minor[only_minor].to_numpy(dtype=object)
    return {
        int(row): _value(value) if isinstance(value, str) else "minor:" + text
        for row, value, text in zip(rows[only_minor], object_values(values), raw, strict=True)
    }


def nth_occurrence_reference(reference: str, occurrence: int) -> str:
    """The generated reference of the k-th identical row without a reference (k ≥ 2): the first
    keeps the id earlier releases generated, so ledgers they built are recognised."""
    prefix, _, digest = reference.partition("-")
    suffix = hashlib.sha256(f"{reference}#{occurrence}".encode()).hexdigest()[:32]
    return f"{prefix}-{suffix}" if digest else suffix
