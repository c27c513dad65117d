"""A CSV reader that never lets one bad record take the file down, nor smuggle one in.

Each record comes back with the physical line it started on. A record that cannot be one
(invalid UTF-8, a byte-order mark inside the file, broken quoting, the wrong number of fields)
comes back as a `MalformedLine` naming its first line and the fault, and reading goes on after
it. Blank lines are skipped. A BOM at the very start of the file is the normal Excel export
marker and is stripped.

Quoting follows RFC 4180. A quote opens a quoted field only at the start of a field; the field
then runs to its closing quote (a doubled quote inside it is data), however many characters or
lines that takes, and no line inside it is ever read as a record of its own. If the quote never
closes, the rest of the file is that one malformed record, whose reason names the line where the
quote opened. A quote anywhere else (`ab"c`, or text after a closing quote: `"ab"c`) is a stray
quote: the record is malformed, but the quote opens nothing, so the record still ends at the end
of its line.

Why not pandas/pyarrow's or the csv module's readers alone: they either stop at the first
malformed line or skip it without telling which physical line it was; the csv module takes a stray
quote in an unquoted field as data and refuses a field longer than its `field_size_limit`. Lines
without quotes (the vast majority) take a plain `str.split`; a line whose quoted fields open and
close in place (checked by one regular expression) is read by the csv module; any other record
goes to `_RecordParser`, which cuts it with regular expressions and `str.find`, not character by
character, so a huge field or one of very many lines stays quick (docs/performance.md, 'Why the
code is shaped this way').
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ledger_backfill_dagster.lib.errors import InputError

BOM = "\ufeff"
# A record's text (line breaks included) is kept up to this many characters, so memory stays
# bounded when a quote opened early in a large file never closes. A longer record is still read to
# its end, as one record, and rejected. No ledger row comes near it: every field but metadata is
# short, and PostgreSQL refuses a JSONB document of 256 MiB or more anyway.
MAX_RECORD_CHARS = 64 * 2**20
# A quoted field's text up to its closing quote: anything but a quote, or a doubled quote.
QUOTED_TEXT = re.compile(r'[^"]*(?:""[^"]*)*')
# A line of fields each either quoted whole (`"…""…"`) or free of quotes.
_FIELD = r'(?:"[^"]*(?:""[^"]*)*"|[^",]*)'
WHOLE_LINE = re.compile(f"{_FIELD}(?:,{_FIELD})*")

Lines = Iterator[tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class MalformedLine:
    line_number: int
    raw_text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Record:
    line_number: int
    fields: list[str]


class HeaderError(InputError):
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


def _body_end(text: str) -> int:
    """Where `text` ends without its line break (LF or CRLF), like `_strip_eol`, without a copy."""
    end = len(text)
    if text.endswith("\n"):
        end -= 1
    if text.endswith("\r", 0, end):
        end -= 1
    return end


def read_records(path: Path) -> tuple[list[str], Iterator[Record | MalformedLine]]:
    """Open `path`; return its header fields and an iterator over its records and bad lines."""
    handle = path.open("rb")
    lines: Lines = enumerate(handle, start=1)
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


def _records(lines: Lines, width: int) -> Iterator[Record | MalformedLine]:
    for number, raw in lines:
        strict = _decode(raw)
        # Invalid bytes become `\xNN` text: no quote, comma or line break is added or lost, so
        # the record still ends where its quoting says.
        text = strict if strict is not None else raw.decode("utf-8", "backslashreplace")
        body = _strip_eol(text)
        if not body.strip():
            continue
        item = _one_line_record(number, text, body, strict is not None, width)
        if item is None:
            item = _parsed_record(lines, number, text, strict is not None, width)
        yield item


def _one_line_record(
    number: int, text: str, body: str, valid_utf8: bool, width: int
) -> Record | MalformedLine | None:
    """The record on this line, read the quick way; None if `_RecordParser` must read it: a quote
    other than in whole quoted fields (it may open a field running on), or too long to keep."""
    if len(text) > MAX_RECORD_CHARS:
        return None
    if '"' in body:
        fields = _whole_line_fields(body) if valid_utf8 else None
        if fields is None:
            return None
    elif not valid_utf8:
        return MalformedLine(number, body, "invalid UTF-8")
    elif body.startswith(BOM):
        return MalformedLine(number, body, "byte-order mark inside the file")
    else:
        fields = body.split(",")
    if len(fields) != width:
        return MalformedLine(number, body, _wrong_count(width, len(fields)))
    return Record(number, fields)


def _wrong_count(width: int, found: int) -> str:
    return f"wrong field count: expected {width}, found {found}"


def _whole_line_fields(body: str) -> list[str] | None:
    """The fields of a one-line record whose quoted fields all open and close in their place (the
    usual quoted line), read by the csv module, which reads such a line as RFC 4180 does; None
    sends the line to `_RecordParser`: a quote left open, a stray quote, a BOM, a CR (csv would
    end the record there), or a field past csv's `field_size_limit`."""
    if "\r" in body or body.startswith(BOM) or not WHOLE_LINE.fullmatch(body):
        return None
    try:
        return next(csv.reader([body], strict=True))
    except csv.Error:
        return None


def _parsed_record(
    lines: Lines, number: int, text: str, valid_utf8: bool, width: int
) -> Record | MalformedLine:
    """The record starting on line `number`, read by `_RecordParser`: it takes further lines
    while a quoted field is open (all of them, if the quote never closes)."""
    record = _RecordParser(number)
    ended = record.feed(number, text, valid_utf8)
    while not ended:
        item = next(lines, None)
        if item is None:
            break
        more = _decode(item[1])
        if more is None:
            ended = record.feed(item[0], item[1].decode("utf-8", "backslashreplace"), False)
        else:
            ended = record.feed(item[0], more, True)
    return record.result(width)


class _RecordParser:
    """One record read line by line as RFC 4180 says, its faults noted on the way.

    Fields are gathered as pieces and joined once (no quadratic concatenation); the state between
    lines is only whether a quoted field is open, and since which line."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.line = start
        self.raw: list[str] = []  # the record's lines as read, for a reject's raw text
        self.kept = 0  # characters in `raw`
        self.cut = False  # longer than MAX_RECORD_CHARS: the rest is read but not kept
        self.fields: list[str] = []
        self.pieces: list[str] = []  # of the field being read
        self.quote_opened: int | None = None  # the line of the quote still open, if any
        self.stray_quote: int | None = None  # the first line with a quote out of place
        self.invalid_utf8: int | None = None  # the first line that is not UTF-8

    def feed(self, number: int, text: str, valid_utf8: bool) -> bool:
        """Read one physical line (with its line break); True if the record ends on it."""
        self.line = number
        if not valid_utf8 and self.invalid_utf8 is None:
            self.invalid_utf8 = number
        self._keep(text)
        end = _body_end(text)  # outside quotes, the record ends there
        # A BOM starting the record makes it malformed, but its quoting is still read past the
        # BOM: a quote right after it opens a field, lest the field's lines be read as records.
        pos: int | None = 1 if number == self.start and text.startswith(BOM) else 0
        if self.quote_opened is not None:
            pos = self._after_quote(text, self._in_quotes(text, 0), end)
        while pos is not None:
            if pos < end and text[pos] == '"':  # a quote at the start of a field opens it
                self.quote_opened = number
                pos = self._after_quote(text, self._in_quotes(text, pos + 1), end)
                continue
            comma = text.find(",", pos, end)
            stop = end if comma < 0 else comma
            self._field_text(text[pos:stop])
            self._end_field()
            pos = None if comma < 0 else comma + 1
        return self.quote_opened is None

    def _in_quotes(self, text: str, pos: int) -> int | None:
        """Read a quoted field's text from `pos`: the position just past its closing quote, or
        None if it goes on past this line (its line break is then part of the field)."""
        match = QUOTED_TEXT.match(text, pos)
        close = match.end() if match else pos  # it matches the empty text: never None
        if close == len(text):
            self._add(text[pos:].replace('""', '"'))
            return None
        self._add(text[pos:close].replace('""', '"'))
        self.quote_opened = None
        return close + 1

    def _after_quote(self, text: str, pos: int | None, end: int) -> int | None:
        """After a closing quote at `pos - 1`: the next field's start past a comma, or None at
        the end of the record (or if the quoted field is still open). Text between the closing
        quote and the comma is broken quoting, read on as unquoted text."""
        if pos is None:
            return None
        comma = text.find(",", pos, end)
        stop = end if comma < 0 else comma
        if stop > pos:
            self._stray()
            self._field_text(text[pos:stop])
        self._end_field()
        return None if comma < 0 else comma + 1

    def _field_text(self, value: str) -> None:
        """Unquoted text: a quote in it is out of place, and opens nothing."""
        if '"' in value:
            self._stray()
        self._add(value)

    def _stray(self) -> None:
        if self.stray_quote is None:
            self.stray_quote = self.line

    def _add(self, piece: str) -> None:
        if not self.cut:
            self.pieces.append(piece)

    def _end_field(self) -> None:
        self.fields.append("".join(self.pieces))
        self.pieces.clear()

    def _keep(self, text: str) -> None:
        if self.cut:
            return
        if self.kept + len(text) > MAX_RECORD_CHARS:
            self.cut = True
            self.raw.append(text[: MAX_RECORD_CHARS - self.kept])
            self.kept = MAX_RECORD_CHARS
            self.pieces.clear()  # the fields will not be used: free them now
            self.fields.clear()
            return
        self.raw.append(text)
        self.kept += len(text)

    def result(self, width: int) -> Record | MalformedLine:
        reason = self._fault(width)
        if reason is None:
            return Record(self.start, self.fields)
        return MalformedLine(self.start, _strip_eol("".join(self.raw)), reason)

    def _fault(self, width: int) -> str | None:
        """The record's first fault, in this order; None if it is a record."""
        if self.quote_opened is not None:
            reason = (
                f"broken quoting (unclosed quote opened on line {self.quote_opened};"
                f" the record runs to the end of the file, {self._lines()})"
            )
        elif self.invalid_utf8 is not None:
            reason = "invalid UTF-8" + self._on_line(self.invalid_utf8)
        elif self.raw[0].startswith(BOM):
            reason = "byte-order mark inside the file"
        elif self.stray_quote is not None:
            reason = f"broken quoting (a quote out of place{self._on_line(self.stray_quote, ',')})"
        elif self.cut:
            reason = f"record longer than {MAX_RECORD_CHARS:,} characters ({self._lines()})"
        elif len(self.fields) != width:
            reason = _wrong_count(width, len(self.fields))
        else:
            return None
        if self.cut:
            reason += f"; only its first {MAX_RECORD_CHARS:,} characters are kept"
        return reason

    def _lines(self) -> str:
        return (
            f"line {self.start}" if self.line == self.start else f"lines {self.start}–{self.line}"
        )

    def _on_line(self, number: int, joint: str = "") -> str:
        return "" if number == self.start else f"{joint} on line {number}"
