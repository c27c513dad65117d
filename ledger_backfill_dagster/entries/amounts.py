"""Amounts by value: the one place that reads how a source spelled an amount (issue 19).

Ledgers and their exports pad amounts (`NUMERIC(38,18)` prints `56722.710000000000000000`, SQL
Server's `money` `1234.5000`, a two-place export JPY `1500.00`, a JSON serializer `1500.0`) or
keep them as integer minor units (`amount_minor BIGINT`: cents, yen, fils). Each spelling states
one exact value; this module turns them into the one spelling the ledger stores: the currency's
ISO 4217 places exactly (USD `10.000` → `10.00`, JPY `1500.00` → `1500`), no leading zeros. A
currency ISO gives no minor unit ("N.A.": gold, SDR) keeps its value's own significant places.

Everything is column-wise, in Arrow's compute kernels (docs/performance.md), never a float
and never a Python loop over rows; rows already spelled as stored
(what most exports write) are only looked at, not rewritten. Nothing here rejects anything: text
that is not a plain decimal, or a value finer than the currency's minor unit, is returned as it
was, and the contract (`contract.py`) says why the row fails.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ledger_backfill_dagster.entries.currencies import minor_units_table

# ASCII digits only: `\d` would also take "١٢٣" or "１０", which Python's Decimal reads but
# PostgreSQL's NUMERIC refuses.
PLAIN_DECIMAL = r"[0-9]+(?:\.[0-9]+)?"
# Minor units are whole; a zero fraction (`150.0`, as JSON serializers write whole numbers)
# states a whole number all the same.
WHOLE_NUMBER = r"[0-9]+(?:\.0+)?"
ZERO = r"0+(?:\.0+)?"
# Exponents beside ISO's: no minor unit ("N.A."), and not a currency at all.
NO_MINOR_UNIT = -1
NOT_A_CURRENCY = -2
# A plain decimal taken apart: leading zeros dropped (one digit kept), trailing fractional zeros
# dropped. RE2 (Arrow's regex engine) honours the lazy quantifiers.
_PARTS = r"^0*(?P<whole>[0-9]+?)(?:\.(?P<fraction>[0-9]*?)0*)?$"


def object_values(values: pd.Series) -> np.ndarray:
    """The values as a NumPy object array, a missing value as None."""
    # pandas takes na_value=None; pandas-stubs 2.3 types na_value as a scalar without None.
    return values.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]


def _flag(values: pd.Series) -> pd.Series:
    return values.fillna(False).astype(bool)


def _arrow(text: pd.Series) -> pa.Array:
    """The column as one Arrow string array (no copy when it is Arrow-backed already)."""
    array = pa.array(text.astype("string[pyarrow]").array)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _series(values: pa.Array, index: pd.Index) -> pd.Series:
    return pd.Series(values.to_pandas(types_mapper=pd.ArrowDtype), index=index)


def _as_flags(values: pa.Array) -> np.ndarray:
    return values.fill_null(False).to_numpy(zero_copy_only=False)


def plain_positive(text: pd.Series) -> pd.Series:
    """A plain decimal (digits, an optional point and digits) greater than zero."""
    return _flag(text.str.fullmatch(PLAIN_DECIMAL) & ~text.str.fullmatch(ZERO))


def whole_positive(text: pd.Series) -> pd.Series:
    """Digits (a zero fraction allowed), greater than zero: an amount in minor units."""
    return _flag(text.str.fullmatch(WHOLE_NUMBER) & ~text.str.fullmatch(ZERO))


def _fraction_lengths(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(has a point, digits after the last non-zero fractional digit) per value."""
    point = pc.find_substring(array, ".")
    has_point = _as_flags(pc.greater_equal(point, 0))
    trimmed = pc.utf8_rtrim(array, characters="0")
    significant = pc.subtract(pc.subtract(pc.utf8_length(trimmed), point), 1)
    digits = np.where(has_point, significant.fill_null(0).to_numpy(zero_copy_only=False), 0)
    return has_point, digits.astype(np.int64)


def significant_fraction_digits(text: pd.Series) -> pd.Series:
    """Digits after the point up to the last non-zero one (`10.500` → 1, `10.000` → 0): what a
    value needs, however many zeros its spelling adds."""
    _, digits = _fraction_lengths(_arrow(text))
    return pd.Series(digits, index=text.index)


def integer_digits(text: pd.Series) -> pd.Series:
    """Digits before the point, leading zeros not counted (`007.50` → 1)."""
    array = _arrow(text)
    point = pc.find_substring(array, ".")
    length = pc.utf8_length(array)
    whole = pc.if_else(pc.greater_equal(point, 0), point, length)
    zeros = pc.subtract(length, pc.utf8_length(pc.utf8_ltrim(array, characters="0")))
    digits = pc.max_element_wise(pc.subtract(whole, zeros), 0)  # "000": three zeros, no point
    return pd.Series(digits.fill_null(0).to_numpy(zero_copy_only=False), index=text.index)


@cache
def _exponent_table() -> tuple[pa.Array, np.ndarray]:
    codes = sorted(minor_units_table())
    units = minor_units_table()
    exponents = [NO_MINOR_UNIT if units[c] is None else units[c] for c in codes]
    return pa.array(codes, pa.string()), np.array([*exponents, NOT_A_CURRENCY], dtype=np.int64)


def currency_exponents(currency: pd.Series) -> np.ndarray:
    """ISO 4217 minor units per row; NO_MINOR_UNIT where ISO says N.A., NOT_A_CURRENCY else."""
    codes, exponents = _exponent_table()
    position = pc.index_in(_arrow(currency), value_set=codes)
    return exponents[position.fill_null(len(exponents) - 1).to_numpy(zero_copy_only=False)]


def _spelled(whole: pa.Array, fraction: pa.Array, places: int) -> pa.Array:
    """whole.fraction with the fraction padded to `places` (N.A.: as it is, no point if none)."""
    if places == 0:
        return whole
    if places > 0:
        fraction = pc.utf8_rpad(fraction, width=places, padding="0")
        return pc.binary_join_element_wise(whole, fraction, pa.scalar(".", whole.type))
    joined = pc.binary_join_element_wise(whole, fraction, pa.scalar(".", whole.type))
    return pc.if_else(pc.equal(pc.utf8_length(fraction), 0), whole, joined)


def normalized(amount: pd.Series, currency: pd.Series) -> pd.Series:
    """Each amount spelled as the ledger stores it, where its value fits its currency; every
    other value (not a plain positive decimal, finer than the minor unit, unknown currency)
    exactly as given."""
    array = _arrow(amount)
    exponents = currency_exponents(currency)
    length = pc.utf8_length(array).fill_null(0).to_numpy(zero_copy_only=False)
    point = pc.find_substring(array, ".").fill_null(-1).to_numpy(zero_copy_only=False)
    written = np.where(point >= 0, length - point - 1, 0)
    leading_zero = _as_flags(pc.starts_with(array, "0")) & (point != 1)
    # Already as stored, if plain: the currency's places exactly and no leading zero (what most
    # exports write). Only the others are looked at closely.
    as_stored = (written == exponents) & ~leading_zero
    others = np.flatnonzero(~as_stored & (exponents != NOT_A_CURRENCY) & (length > 0))
    if not len(others):
        return amount.astype("string[pyarrow]")
    text = array.take(pa.array(others))
    _, needed = _fraction_lengths(text)
    places = exponents[others]
    plain = plain_positive(pd.Series(text.to_pandas(types_mapper=pd.ArrowDtype))).to_numpy()
    fits = plain & ((places == NO_MINOR_UNIT) | (needed <= places))
    rows = others[fits]
    if not len(rows):
        return amount.astype("string[pyarrow]")
    parts = pc.extract_regex(array.take(pa.array(rows)), _PARTS)
    whole, fraction = parts.field("whole"), parts.field("fraction").fill_null("")
    spelled = np.empty(len(rows), dtype=object)
    for group_places in np.unique(exponents[rows]):
        group = np.flatnonzero(exponents[rows] == group_places)
        picked = pa.array(group)
        joined = _spelled(whole.take(picked), fraction.take(picked), int(group_places))
        spelled[group] = joined.to_numpy(zero_copy_only=False)
    out = array.to_numpy(zero_copy_only=False).astype(object)
    out[rows] = spelled
    return pd.Series(pd.array(out, dtype="string[pyarrow]"), index=amount.index)


def from_minor_units(minor: pd.Series, currency: pd.Series) -> pd.Series:
    """amountMinor / 10^exponent of the currency, exactly, spelled as `normalized` spells it;
    NA where the minor units are not a whole number greater than zero or the currency has no
    ISO minor unit (or is unknown)."""
    out = pd.Series(pd.NA, index=minor.index, dtype="string[pyarrow]")
    given = minor.notna().to_numpy()
    if not given.any():
        return out
    exponents = currency_exponents(currency)
    rows = np.flatnonzero(given & whole_positive(minor).to_numpy() & (exponents >= 0))
    if not len(rows):
        return out
    digits = pc.extract_regex(_arrow(minor).take(pa.array(rows)), r"^0*(?P<d>[0-9]+?)(?:\.0+)?$")
    digits = digits.field("d")
    values = np.empty(len(rows), dtype=object)
    for places in np.unique(exponents[rows]):
        group = np.flatnonzero(exponents[rows] == places)
        text = digits.take(pa.array(group))
        if places > 0:
            padded = pc.utf8_lpad(text, width=int(places) + 1, padding="0")
            whole = pc.utf8_slice_codeunits(padded, 0, -int(places))
            text = pc.binary_join_element_wise(
                whole, pc.utf8_slice_codeunits(padded, -int(places)), pa.scalar(".", whole.type)
            )
        values[group] = text.to_numpy(zero_copy_only=False)
    result = object_values(out)
    result[rows] = values
    return pd.Series(pd.array(result, dtype="string[pyarrow]"), index=minor.index)


def has_no_minor_unit(currency: pd.Series) -> pd.Series:
    """The currency is ISO 4217's but has no minor unit (N.A.): amountMinor means nothing."""
    return pd.Series(currency_exponents(currency) == NO_MINOR_UNIT, index=currency.index)
