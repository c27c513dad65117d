"""Amounts by value: the one place that reads how a source spelled an amount (issue 19).

Ledgers and their exports pad amounts (`NUMERIC(38,18)` prints `56722.710000000000000000`, SQL
Server's `money` `1234.5000`, a two-place export JPY `1500.00`, a JSON serializer `1500.0`) or
keep them as integer minor units (`amount_minor BIGINT`: cents, yen, fils). Each spelling states
one exact value; this module turns them into the one spelling the ledger stores: the currency's
ISO 4217 places exactly (USD `10.000` → `10.00`, JPY `1500.00` → `1500`), no leading zeros. A
currency ISO gives no minor unit ("N.A.": gold, SDR) keeps its value's own significant places.

Every function is column-wise (string kernels over the rows of each distinct number of places,
a handful per frame), never a Python loop over rows; none of them rejects anything: text that is
not a plain decimal, or a value finer than the currency's minor unit, is returned as it was, and
the contract (`contract.py`) says why the row fails.
"""

from __future__ import annotations

import pandas as pd

from ledger_backfill_dagster.currencies import minor_units_table

# ASCII digits only: `\d` would also take "١٢٣" or "１０", which Python's Decimal reads but
# PostgreSQL's NUMERIC refuses.
PLAIN_DECIMAL = r"[0-9]+(?:\.[0-9]+)?"
# Minor units are whole; a zero fraction (`150.0`, as JSON serializers write numbers) states
# a whole number all the same.
WHOLE_NUMBER = r"[0-9]+(?:\.0+)?"
ZERO = r"0+(?:\.0+)?"


def _flag(values: pd.Series) -> pd.Series:
    return values.fillna(False).astype(bool)


def plain_positive(text: pd.Series) -> pd.Series:
    """A plain decimal (digits, an optional point and digits) greater than zero."""
    return _flag(text.str.fullmatch(PLAIN_DECIMAL) & ~text.str.fullmatch(ZERO))


def whole_positive(text: pd.Series) -> pd.Series:
    """Digits (a zero fraction allowed), greater than zero: an amount in minor units."""
    return _flag(text.str.fullmatch(WHOLE_NUMBER) & ~text.str.fullmatch(ZERO))


def significant_fraction_digits(text: pd.Series) -> pd.Series:
    """Digits after the point up to the last non-zero one (`10.500` → 1, `10.000` → 0): what a
    value needs, however many zeros its spelling adds."""
    point = text.str.find(".")
    has_point = _flag(point >= 0)
    trimmed = text.where(~has_point, text.str.rstrip("0"))
    digits = (trimmed.str.len() - point - 1).where(has_point, 0)
    return digits.fillna(0).astype("int64")


def integer_digits(text: pd.Series) -> pd.Series:
    """Digits before the point, leading zeros not counted (`007.50` → 1)."""
    point = text.str.find(".")
    whole = point.where(point >= 0, text.str.len())
    leading_zeros = text.str.len() - text.str.lstrip("0").str.len()  # stops at the point
    return (whole - leading_zeros).fillna(0).astype("int64")


def _currency_exponents(currency: pd.Series) -> pd.Series:
    """ISO 4217 minor units per row: an integer, -1 where ISO says N.A., NA if not a currency."""
    table = {code: (-1 if units is None else units) for code, units in minor_units_table().items()}
    return currency.map(table).astype("Int64")


def _join(whole: pd.Series, fraction: pd.Series) -> pd.Series:
    whole = whole.str.lstrip("0")
    whole = whole.mask(whole == "", "0")
    return whole.mask(fraction != "", whole + "." + fraction)


def normalized(amount: pd.Series, currency: pd.Series) -> pd.Series:
    """Each amount spelled as the ledger stores it, where its value fits its currency; every
    other value (not a plain positive decimal, finer than the minor unit, unknown currency)
    exactly as given."""
    amount = amount.astype("string")
    out = amount.copy()
    exponents = _currency_exponents(currency.astype("string"))
    candidates = plain_positive(amount) & exponents.notna()
    if not candidates.any():
        return out
    needed = significant_fraction_digits(amount)
    for places in pd.unique(exponents[candidates]):
        rows = candidates & (exponents == places)
        if places >= 0:
            rows &= needed <= places
        if not rows.any():
            continue
        parts = amount[rows].str.split(".", n=1, expand=True, regex=False)
        whole = parts[0]
        fraction = parts[1].fillna("") if parts.shape[1] > 1 else whole.str.slice(0, 0)
        fraction = fraction.str.rstrip("0")
        if places > 0:
            fraction = fraction.str.pad(int(places), side="right", fillchar="0")
        out[rows] = _join(whole, fraction).astype("string")
    return out


def from_minor_units(minor: pd.Series, currency: pd.Series) -> pd.Series:
    """amountMinor / 10^exponent of the currency, exactly, spelled as `normalized` spells it;
    NA where the minor units are not a whole number greater than zero or the currency has no
    ISO minor unit (or is unknown)."""
    minor = minor.astype("string")
    out = pd.Series(pd.NA, index=minor.index, dtype="string")
    exponents = _currency_exponents(currency.astype("string"))
    candidates = whole_positive(minor) & _flag(exponents >= 0)
    for places in pd.unique(exponents[candidates]):
        rows = candidates & (exponents == places)
        digits = minor[rows].str.split(".", n=1, regex=False).str[0].astype("string")
        digits = digits.str.lstrip("0")
        if places == 0:
            out[rows] = digits
            continue
        padded = digits.str.pad(int(places) + 1, side="left", fillchar="0")
        whole = padded.str.slice(0, -int(places))
        out[rows] = _join(whole, padded.str.slice(-int(places))).astype("string")
    return out


def has_no_minor_unit(currency: pd.Series) -> pd.Series:
    """The currency is ISO 4217's but has no minor unit (N.A.): amountMinor means nothing."""
    return _flag(_currency_exponents(currency.astype("string")) == -1)
