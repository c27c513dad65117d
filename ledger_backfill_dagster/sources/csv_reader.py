"""A CSV reader that never lets one bad line take the file down.

Each record comes back with the physical line it started on. A line that cannot be a record
(invalid UTF-8, a byte-order mark inside the file, broken quoting, the wrong number of fields)
comes back as a `MalformedLine` naming the line and the fault, and reading goes on at the next
line. Blank lines are skipped. A BOM at the very start of the file is the normal Excel export
marker and is stripped.

Why not pandas/pyarrow's readers: they either stop at the first malformed line or skip it
without telling which physical line it was, and an unclosed quote makes them swallow every line up
to the next quote. Rows without quotes (the vast majority) take a plain `str.split` fast path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BOM = "\ufeff"
CR_STAND_IN = "\uffff"  # a Unicode noncharacter: stands in for CR while the csv module parses
# A quoted field may hold line breaks; a record is given up after this many physical lines.
MAX_LINES_PER_RECORD = 50


@dataclass(frozen=True, slots=True)
class MalformedLine:
    line_number: int
    raw_text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    line_number: int
    fields: list[str]


class HeaderError(ValueError):
    """The file has no usable header line; nothing in it can be read."""


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _strip_eol(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def _parse_quoted(text: str) -> list[str] | None:
    """Parse one logical record with strict quoting; None if the quoting is broken.

    Records end only at LF, so a bare CR left inside the record is data, quoted or not (pandas
    on Linux writes a CR inside a field without quotes). The csv module would call an unquoted
    one a line break, so it is swapped for a character the text does not hold while parsing."""
    swap = "\r" in text and CR_STAND_IN not in text
    if swap:
        text = text.replace("\r", CR_STAND_IN)
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    if len(rows) != 1:
        return None
    return [f.replace(CR_STAND_IN, "\r") for f in rows[0]] if swap else rows[0]


def _quotes_balanced(text: str) -> bool:
    return text.count('"') % 2 == 0


class _Lines:
    """Physical lines with their numbers, and room to push lines back after a failed lookahead."""

    def __init__(self, raw_lines: Iterable[bytes]) -> None:
        self._source = iter(raw_lines)
        self._pushed: list[tuple[int, bytes]] = []
        self._number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> tuple[int, bytes]:
        if self._pushed:
            return self._pushed.pop()
        raw = next(self._source)
        self._number += 1
        return self._number, raw

    def push_back(self, lines: list[tuple[int, bytes]]) -> None:
        self._pushed.extend(reversed(lines))


def read_records(path: Path) -> tuple[list[str], Iterator[Record | MalformedLine]]:
    """Open `path`; return its header fields and an iterator over its records and bad lines."""
    handle = path.open("rb")
    lines = _Lines(handle)
    header: list[str] | None = None
    for number, raw in lines:
        text = _decode(raw)
        if text is None:
            handle.close()
            raise HeaderError(f"{path}: line {number}: header is not valid UTF-8")
        if number == 1 and text.startswith(BOM):
            text = text[1:]
        text = _strip_eol(text)
        if not text.strip():
            continue
        try:
            header = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            handle.close()
            raise HeaderError(f"{path}: line {number}: the header cannot be read: {exc}") from exc
        break
    if header is None:
        handle.close()
        raise HeaderError(f"{path}: the file is empty (no header line)")
    header = [name.strip() for name in header]

    def records() -> Iterator[Record | MalformedLine]:
        with handle:
            yield from _records(lines, len(header))

    return header, records()


def _records(lines: _Lines, width: int) -> Iterator[Record | MalformedLine]:
    for number, raw in lines:
        decoded = _decode(raw)
        if decoded is None:
            yield MalformedLine(number, raw.decode("utf-8", "backslashreplace"), "invalid UTF-8")
            continue
        text = _strip_eol(decoded)
        if not text.strip():
            continue
        if text.startswith(BOM):
            yield MalformedLine(number, text, "byte-order mark inside the file")
            continue
        if '"' not in text:
            fields = text.split(",")
        elif _quotes_balanced(text):
            fields = _parse_quoted(text)
            if fields is None:
                yield MalformedLine(number, text, "broken quoting")
                continue
        else:
            record = _multiline_record(lines, number, decoded, width)
            yield record or MalformedLine(number, text, "broken quoting (unclosed quote)")
            continue
        if len(fields) != width:
            yield MalformedLine(
                number, text, f"wrong field count: expected {width}, found {len(fields)}"
            )
            continue
        yield Record(number, fields)


def _multiline_record(
    lines: _Lines, number: int, first: str, width: int
) -> Record | MalformedLine | None:
    """Join following lines while a quoted field stays open. A record that closes properly is
    one record, even with the wrong number of fields (then it is malformed as a whole). If the
    quote never closes into a parseable record, push the lines back (None): only the first line
    is lost. Line breaks inside the quoted field are kept as written (LF or CRLF)."""
    consumed: list[tuple[int, bytes]] = []
    text = first
    for _ in range(MAX_LINES_PER_RECORD - 1):
        try:
            item = next(lines)
        except StopIteration:
            break
        consumed.append(item)
        piece = _decode(item[1])
        if piece is None:
            break
        text += piece
        if _quotes_balanced(text):
            fields = _parse_quoted(_strip_eol(text))
            if fields is not None and len(fields) == width:
                return Record(number, fields)
            if fields is not None:
                return MalformedLine(
                    number,
                    _strip_eol(text),
                    f"wrong field count: expected {width}, found {len(fields)}",
                )
            break
    lines.push_back(consumed)
    return None
