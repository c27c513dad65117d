"""Reading the files an operator supplies: ACCOUNTS_FILE, ACCOUNT_MAP_FILE,
TRANSACTION_TYPE_MAP_FILE and COLUMN_MAP_FILE.

One rule for all of them: a file that cannot be used fails with a message naming the variable, the
file and the line (and the byte, for text that is not UTF-8), never a bare decoding error that the
caller can only report as "the source cannot be read".
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from ledger_backfill_dagster.lib.errors import InputError


class UserFileError(InputError):
    """A user-supplied file cannot be used; the message names the variable, file and line."""


def _where(setting: str, path: str) -> str:
    return f"{setting} {path}"


def read_user_text(setting: str, path: str) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); UserFileError naming the line of the
    first byte that is not UTF-8, or of a NUL byte, and naming the file if it cannot be opened."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserFileError(f"{_where(setting, path)}: cannot be read: {reason}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise UserFileError(
            f"{_where(setting, path)}: line {line}, byte {column}: 0x{data[exc.start]:02x} is "
            "not UTF-8 text (save the file as UTF-8)"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise UserFileError(f"{_where(setting, path)}: line {line}: holds a NUL byte")
    return text


def read_user_csv(setting: str, path: str) -> list[tuple[int, list[str]]]:
    """Every record of a CSV file with the line it starts on (blank lines skipped); a record
    the csv module cannot read fails naming its line."""
    reader = csv.reader(io.StringIO(read_user_text(setting, path), newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if row:
                records.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserFileError(f"{_where(setting, path)}: line {start}: {exc}") from None
    return records
