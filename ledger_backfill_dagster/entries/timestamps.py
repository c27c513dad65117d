"""Timestamp normalization (the seed's transformation rule 4), vectorized.

ISO 8601 in; UTC out. A timestamp with an offset is converted to UTC; one without is read in
SOURCE_TIMEZONE. Local times that do not exist or are ambiguous (DST changes) are rejected rather
than guessed. The UTC day decides the partition.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

# An offset only counts after a time of day: "2024-01-05" ends in "-05" but has none.
_HAS_OFFSET = r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$"
# ISO 8601 shapes only: pandas' ISO8601 parser alone would also take e.g. "2024-1-5".
# ASCII digits only (`\d` would take any script's digits).
_ISO_SHAPE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?)?"
    r"(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)

EMPTY = "timestampUtc: empty"
UNPARSEABLE = "timestampUtc: not an ISO 8601 timestamp"
NONEXISTENT_LOCAL = "timestampUtc: local time does not exist or is ambiguous in SOURCE_TIMEZONE"
LATER_THAN_RUN_START = "timestampUtc: later than the run's start"
BEFORE_START_DATE = "timestampUtc: before BACKFILL_START_DATE (belongs to no partition)"


def parse_utc(values: pd.Series, source_timezone: str) -> tuple[pd.Series, pd.Series]:
    """Return (UTC timestamps at microsecond precision, reason or None) for each value."""
    text = values.astype("string").str.strip()
    empty = text.isna() | (text == "")
    shaped = text.str.fullmatch(_ISO_SHAPE).fillna(False).astype(bool)
    has_offset = text.str.contains(_HAS_OFFSET, regex=True).fillna(False).astype(bool)

    aware_text = (
        text.where(shaped & has_offset)
        .str.replace(",", ".", regex=False)
        .str.replace(r"z$", "Z", regex=True)  # RFC 3339 allows a lower-case z
    )
    naive_text = text.where(shaped & ~has_offset).str.replace(",", ".", regex=False)
    aware = pd.to_datetime(aware_text, format="ISO8601", utc=True, errors="coerce")
    naive = pd.to_datetime(naive_text, format="ISO8601", errors="coerce")
    localized = naive.dt.tz_localize(source_timezone, ambiguous="NaT", nonexistent="NaT")
    result = aware.where(has_offset, localized.dt.tz_convert("UTC"))
    result = result.dt.floor("us").astype("datetime64[us, UTC]")

    reasons = pd.Series(None, index=values.index, dtype="object")
    reasons[result.isna()] = UNPARSEABLE
    reasons[result.isna() & naive.notna() & ~has_offset] = NONEXISTENT_LOCAL
    unread = shaped & ((has_offset & aware.isna()) | (~has_offset & naive.isna()))
    for index in unread[unread].index:  # rare: out of pandas' range (1677-2262) or not a date
        reasons[index] = _out_of_range(str(text[index]))
    reasons[empty] = EMPTY
    return result, reasons


def _out_of_range(text: str) -> str:
    """Why a well-shaped timestamp pandas could not read is refused: a real date outside the
    years pandas represents is too late or too early for any partition; anything else
    (February 30, hour 25) is not a timestamp at all."""
    try:
        moment = datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        return UNPARSEABLE
    return LATER_THAN_RUN_START if moment.year > 2000 else BEFORE_START_DATE


# Every reason a row can have no UTC timestamp, as the contract and the extract stage word them.
TIMESTAMP_REASONS = (EMPTY, UNPARSEABLE, NONEXISTENT_LOCAL, LATER_THAN_RUN_START, BEFORE_START_DATE)


def unplaced_reasons(text: pd.Series, placed: pd.Series) -> pd.Series:
    """Why each row a reader staged without a UTC timestamp has none, worded as `parse_utc`
    words it (issue 20: a row meets the same reason from every source); NA where a timestamp
    was placed. The reader already parsed `text` in SOURCE_TIMEZONE, so a text that reads as a
    time in UTC and was still not placed is a local time the zone skips or repeats."""
    reasons = pd.Series(pd.NA, index=text.index, dtype="string")
    missing = placed.isna().to_numpy()
    if not missing.any():
        return reasons
    _, in_utc = parse_utc(text[missing], "UTC")
    reasons[missing] = in_utc.where(in_utc.notna(), NONEXISTENT_LOCAL).astype("string")
    return reasons
