"""Timestamp normalization (the seed's transformation rule 4), vectorized.

ISO 8601 in; UTC out. A timestamp with an offset is converted to UTC; one without is read in
SOURCE_TIMEZONE. Local times that do not exist or are ambiguous (DST changes) are rejected rather
than guessed. The UTC day decides the partition.
"""

from __future__ import annotations

import pandas as pd

# An offset only counts after a time of day: "2024-01-05" ends in "-05" but has none.
_HAS_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
# ISO 8601 shapes only: pandas' ISO8601 parser alone would also take e.g. "2024-1-5".
_ISO_SHAPE = (
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?"
    r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)?$"
)

EMPTY = "timestampUtc: empty"
UNPARSEABLE = "timestampUtc: not an ISO 8601 timestamp"
NONEXISTENT_LOCAL = "timestampUtc: local time does not exist or is ambiguous in SOURCE_TIMEZONE"


def parse_utc(values: pd.Series, source_timezone: str) -> tuple[pd.Series, pd.Series]:
    """Return (UTC timestamps at microsecond precision, reason or None) for each value."""
    text = values.astype("string").str.strip()
    empty = text.isna() | (text == "")
    shaped = text.str.fullmatch(_ISO_SHAPE).fillna(False).astype(bool)
    has_offset = text.str.contains(_HAS_OFFSET, regex=True).fillna(False).astype(bool)

    aware_text = text.where(shaped & has_offset).str.replace(",", ".", regex=False)
    naive_text = text.where(shaped & ~has_offset).str.replace(",", ".", regex=False)
    aware = pd.to_datetime(aware_text, format="ISO8601", utc=True, errors="coerce")
    naive = pd.to_datetime(naive_text, format="ISO8601", errors="coerce")
    localized = naive.dt.tz_localize(source_timezone, ambiguous="NaT", nonexistent="NaT")
    result = aware.where(has_offset, localized.dt.tz_convert("UTC"))
    result = result.dt.floor("us").astype("datetime64[us, UTC]")

    reasons = pd.Series(None, index=values.index, dtype="object")
    reasons[result.isna()] = UNPARSEABLE
    reasons[result.isna() & naive.notna() & ~has_offset] = NONEXISTENT_LOCAL
    reasons[empty] = EMPTY
    return result, reasons
