"""JSON with exact numbers, as PostgreSQL's JSONB keeps them.

Python's `json` reads `1.00000000000000000001` as the float 1.0 and `1e400` as infinity (which
it then writes as `Infinity`, which no JSON parser takes), and refuses integers of more than
4,300 digits. JSONB stores every number as a NUMERIC: exact, up to 131,072 digits before the
point and 16,383 after. Here every number is read as a `Decimal` holding exactly the digits and
exponent written, and written back from it, so a document survives a round trip through Python
unchanged up to JSONB's own normalisation (`1E+2` is stored as `100`; `1.50` keeps its zero).

A number NUMERIC cannot hold is read as an `UnstorableNumber`: its text, written back as a JSON
string, so a reject can still keep it; the transformation rejects documents holding one.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal

# PostgreSQL's NUMERIC (numeric.c): the weight is an int16 count of base-10000 digits, so a
# value must be below 10^131072; the display scale is 14 bits (at most 16,383 digits after the
# point, trailing zeros and negative exponents included); the written exponent may not reach
# PG_INT32_MAX / 2 in magnitude, whatever the digits (`0e2000000000` is refused too; PostgreSQL
# 16+ still takes exactly PG_INT32_MAX / 2, 15 does not: the stricter bound holds for both).
MAX_ADJUSTED_EXPONENT = 131_071
MAX_SCALE = 16_383
MAX_WRITTEN_EXPONENT = 2_147_483_647 // 2 - 1


class UnstorableNumber(str):
    """The text of a JSON number that JSONB cannot store."""


def jsonb_number(token: str) -> Decimal | UnstorableNumber:
    """A JSON number token as an exact Decimal, or as `UnstorableNumber` if NUMERIC refuses it."""
    if len(token) <= MAX_SCALE and "e" not in token and "E" not in token:
        return Decimal(token)  # too few digits to leave NUMERIC's range: the common case
    _, marker, exponent = token.lower().partition("e")
    if marker:
        digits = exponent.lstrip("+-").lstrip("0")
        # Checked on the text first: Decimal itself refuses exponents past ~10^18.
        if len(digits) > len(str(MAX_WRITTEN_EXPONENT)) or int(digits or 0) > MAX_WRITTEN_EXPONENT:
            return UnstorableNumber(token)
    value = Decimal(token)
    _, coefficient, power = value.as_tuple()  # a JSON number is finite: power is an int
    too_precise = -int(power) > MAX_SCALE
    too_large = any(coefficient) and value.adjusted() > MAX_ADJUSTED_EXPONENT
    return UnstorableNumber(token) if too_precise or too_large else value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: JSONB refuses them


_DECODER = json.JSONDecoder(
    parse_float=jsonb_number, parse_int=jsonb_number, parse_constant=_refuse_constant
)
# Python's own numbers, for text that is only judged: much faster than a Decimal per number
# (docs/performance.md, 'Why the code is shaped this way'), and safe while no number can be out of
# NUMERIC's range or too long for int().
_JUDGE = json.JSONDecoder(parse_constant=_refuse_constant)
# Only a number with an exponent, or one longer than MAX_SCALE characters, can leave NUMERIC's
# range: text with neither needs no search of the parsed document.
_EXPONENT = re.compile(r"[0-9][eE]")


def loads(text: str, *, exact: bool = True) -> tuple[object, bool]:
    """Parse JSON text: (the document, whether it holds a number JSONB cannot store). Numbers
    are `Decimal` (or `UnstorableNumber`), never float or int, unless `exact` is False: then,
    for a caller that keeps the text as written and only needs it judged, they may be Python's.
    Raises ValueError on text that is not JSON (NaN and Infinity included), RecursionError on
    nesting deeper than Python's parser goes. One decoder for all calls: json.loads with
    options would build one per call."""
    plain = len(text) <= MAX_SCALE and not _EXPONENT.search(text)
    if plain and not exact and len(text) <= (sys.get_int_max_str_digits() or MAX_SCALE):
        return _JUDGE.decode(text), False
    document = _DECODER.decode(text)
    return document, not plain and _holds_unstorable(document)


def _holds_unstorable(document: object) -> bool:
    """Whether a parsed document holds an `UnstorableNumber` (iteratively: any depth)."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, UnstorableNumber):
            return True
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def dumps(node: object) -> str:
    """JSON text of what `loads` parsed: Decimals written with exactly their digits and exponent
    (`str(Decimal)` is always a valid JSON number for a finite value), strings unescaped
    (`ensure_ascii=False`). One Python frame per level of nesting, as `loads` uses."""
    if isinstance(node, Decimal):
        return str(node)
    if isinstance(node, dict):
        parts = []
        for key, value in node.items():
            parts.append(json.dumps(key, ensure_ascii=False) + ":" + dumps(value))
        return "{" + ",".join(parts) + "}"
    if isinstance(node, list):
        items = []
        for value in node:
            items.append(dumps(value))
        return "[" + ",".join(items) + "]"
    return json.dumps(node, ensure_ascii=False)
