"""The CSV reader: one bad record never takes the file down, a quoted field is one field whatever
its length or line count, and every record keeps the number of the line it starts on."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from ledger_backfill_dagster.sources import csv_reader
from ledger_backfill_dagster.sources.csv_reader import MalformedLine, Record, read_records

ROW = "MASTER,U1,U2,1.00,USD"  # a line that looks like a record of the 5-field files below
HEADER = "a,b,c,d,e\n"


def _read(tmp_path: Path, content: bytes) -> tuple[list[str], list[Record | MalformedLine]]:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    header, items = read_records(path)
    return header, list(items)


def _items(tmp_path: Path, content: str) -> list[Record | MalformedLine]:
    return _read(tmp_path, content.encode())[1]


def _csv_line(*fields: str, terminator: str = "\n") -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator=terminator).writerow(fields)
    return out.getvalue()


def test_bom_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    header, items = _read(tmp_path, b'\xef\xbb\xbfa,b,c\r\n1,2,3\r\n\r\n4,"x\ny",6\n7,8,9\n')
    assert header == ["a", "b", "c"]
    assert [(i.line_number, i.fields) for i in items] == [
        (2, ["1", "2", "3"]),
        (4, ["4", "x\ny", "6"]),
        (6, ["7", "8", "9"]),
    ]


def test_malformed_lines_are_isolated(tmp_path: Path) -> None:
    content = (
        b"a,b,c\n"
        b"1,2,3\n"
        b"1,2\n"  # too few
        b"1,2,3,4\n"  # too many
        b"\xff\xfe,2,3\n"  # invalid UTF-8
        b"\xef\xbb\xbf1,2,3\n"  # BOM inside the file
        b'1,ab"c,3\n'  # stray quote (an odd count: it must not open a field)
        b'"a"b,2,3\n'  # text after a closing quote
        b'1,ab""c,3\n'  # quotes inside an unquoted field, even doubled
        b'1, "b",3\n'  # a quote after a space is not at the field's start
        b"4,5,6\n"
    )
    _, items = _read(tmp_path, content)
    good = [(i.line_number, i.fields) for i in items if isinstance(i, Record)]
    bad = {i.line_number: i.reason for i in items if isinstance(i, MalformedLine)}
    assert good == [(2, ["1", "2", "3"]), (11, ["4", "5", "6"])]
    assert set(bad) == set(range(3, 11))
    assert "expected 3, found 2" in bad[3]
    assert "found 4" in bad[4]
    assert bad[5] == "invalid UTF-8"
    assert "byte-order mark" in bad[6]
    for line in range(7, 11):
        assert bad[line] == "broken quoting (a quote out of place)"


# --- a quoted field is one field, whatever its length or line count ---------------------------


def test_a_10_mib_quoted_field_is_read_whole(tmp_path: Path) -> None:
    # Commas, doubled quotes and CSV-looking text throughout; 80 times csv's default field limit.
    one_line = ('x,"y", ' + ROW + " ") * 600_000
    many_lines = "\n".join([f'{ROW},"{i}",{"p" * 200}' for i in range(50_000)])
    assert len(one_line) > 10 * 2**20 and len(many_lines) > 10 * 2**20
    content = HEADER + _csv_line("1", one_line, "3", "4", "5") + _csv_line("6", "7", "8", "9", "0")
    content += _csv_line("1", "2", many_lines, "4", "5") + "last,2,3,4,5"
    items = _items(tmp_path, content)
    assert items == [
        Record(2, ["1", one_line, "3", "4", "5"]),
        Record(3, ["6", "7", "8", "9", "0"]),
        Record(4, ["1", "2", many_lines, "4", "5"]),
        Record(4 + 50_000, ["last", "2", "3", "4", "5"]),
    ]


def test_a_100000_line_quoted_field_is_read_whole(tmp_path: Path) -> None:
    """Every line inside looks like a record; some are empty; LF and CRLF breaks are kept."""
    inner = [ROW, "", "4,5,6,7,8", "   ", f"{ROW},extra"]
    breaks = ["\n", "\r\n", "\r\n"]
    text = "".join(inner[i % 5] + breaks[i % 3] for i in range(100_000)) + "end"
    content = HEADER + "0,0,0,0,0\n" + _csv_line("1", "2", "3", "4", text) + "9,9,9,9,9\n"
    items = _items(tmp_path, content)
    assert items == [
        Record(2, ["0"] * 5),
        Record(3, ["1", "2", "3", "4", text]),
        Record(3 + 100_000 + 1, ["9"] * 5),
    ]


@pytest.mark.parametrize("inner_lines", [1, 49, 50, 51, 120, 1000])
def test_lines_inside_quotes_never_become_records(tmp_path: Path, inner_lines: int) -> None:
    inner = "\n".join(
        [f"{ROW}", f'"{ROW}"', f'{ROW},"x', '",', "a,b"][i % 5] for i in range(inner_lines)
    )
    quoted = inner.replace('"', '""')
    content = f'{HEADER}1,2,3,4,5\n6,7,8,"{quoted}",9\n10,11,12,13,14\n'
    items = _items(tmp_path, content)
    assert items == [
        Record(2, ["1", "2", "3", "4", "5"]),
        Record(3, ["6", "7", "8", inner, "9"]),
        Record(3 + inner_lines, ["10", "11", "12", "13", "14"]),
    ]


def test_a_quoted_record_that_closes_with_the_wrong_field_count_is_one_reject(
    tmp_path: Path,
) -> None:
    inner = "\n".join([ROW] * 80)
    content = f'{HEADER}1,"{inner}",3\n4,5,6,7,8\n'
    items = _items(tmp_path, content)
    assert len(items) == 2
    assert items[0] == MalformedLine(2, f'1,"{inner}",3', "wrong field count: expected 5, found 3")
    assert items[1] == Record(82, ["4", "5", "6", "7", "8"])


# --- an unclosed quote: the rest of the file is one reject naming the line -------------------

UNCLOSED = {
    # name: (lines before the faulty record, the record's first line, the line the quote opens on)
    "in the first field": ('"open,2,3,4,5', 0),
    "in the last field": ('1,2,3,4,"open', 0),
    "empty, at the end of the line": ("1,2,3,4,", 0),
    "after a quoted field": ('"a","b",3,4,"open', 0),
    "after a doubled quote": ('1,2,3,4,"say ""hi""', 0),
    "opened on the record's second line": ('1,"a\nb","c', 1),
    "after a BOM": ('\ufeff"open,2,3,4,5', 0),
}


@pytest.mark.parametrize("case", sorted(UNCLOSED))
@pytest.mark.parametrize("where", ["first record", "middle", "last line", "last, no newline"])
def test_an_unclosed_quote_makes_the_rest_of_the_file_one_reject(
    tmp_path: Path, case: str, where: str
) -> None:
    start, opened_after = UNCLOSED[case]
    if start.endswith(","):
        start += '"'  # the quote opens an empty last field
    before = {"first record": 0, "middle": 7, "last line": 30, "last, no newline": 30}[where]
    after = {"first record": 60, "middle": 60, "last line": 0, "last, no newline": 0}[where]
    rows = [f"{i},{i},{i},{i},{i}\n" for i in range(before)]
    rest = start + "\n" + "".join(f"{ROW}\n" if i % 2 else f"{ROW},x\n" for i in range(after))
    if where == "last, no newline":
        rest = rest.rstrip("\n")
    items = _items(tmp_path, HEADER + "".join(rows) + rest)
    line = 2 + before
    assert items[:-1] == [Record(2 + i, [str(i)] * 5) for i in range(before)]
    reject = items[-1]
    assert isinstance(reject, MalformedLine)
    assert reject.line_number == line
    assert reject.raw_text == rest.rstrip("\n").rstrip("\r")
    opened = line + opened_after
    assert reject.reason.startswith(f"broken quoting (unclosed quote opened on line {opened};")
    last = line + rest.rstrip("\n").count("\n")
    assert reject.reason.endswith(
        f"runs to the end of the file, {f'lines {line}–{last}' if last > line else f'line {line}'})"
    )


def test_a_quote_closing_many_lines_later_takes_those_lines_with_it(tmp_path: Path) -> None:
    """A field opened by mistake closes at the next lone quote, however far: the lines between are
    part of that one record (then malformed), never records of their own."""
    middle = "".join(f"{ROW}\n" for _ in range(70))
    content = f'{HEADER}1,2,3,4,"oops\n{middle}5,6,7,8,"x"\n9,9,9,9,9\n'
    items = _items(tmp_path, content)
    assert [type(i) for i in items] == [MalformedLine, Record]
    assert items[0].line_number == 2
    assert items[0].reason == "broken quoting (a quote out of place, on line 73)"
    assert items[1] == Record(74, ["9"] * 5)


def test_invalid_utf8_or_a_bom_inside_a_quoted_field(tmp_path: Path) -> None:
    """Inside quotes a bad line is part of the record, which is rejected whole; a BOM inside a
    field is a character like any other."""
    content = (
        HEADER.encode()
        + b'1,2,3,4,"a\n\xff\xfe,2,3,4,5\nb"\n'
        + b'1,2,3,4,"\xef\xbb\xbfa\n\xef\xbb\xbf1,2,3,4,5"\n'
        + b"6,7,8,9,0\n"
    )
    _, items = _read(tmp_path, content)
    assert items == [
        MalformedLine(2, '1,2,3,4,"a\n\\xff\\xfe,2,3,4,5\nb"', "invalid UTF-8 on line 3"),
        Record(5, ["1", "2", "3", "4", "\ufeffa\n\ufeff1,2,3,4,5"]),
        Record(7, ["6", "7", "8", "9", "0"]),
    ]


def test_a_record_longer_than_the_limit_is_read_to_its_end_and_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_reader, "MAX_RECORD_CHARS", 1000)
    long_field = "\n".join([ROW] * 100)  # ~2,200 characters over 100 lines
    content = (
        f'{HEADER}1,2,3,4,"{long_field}"\n'
        f"{'z' * 1200},2,3,4,5\n"
        f"{'y' * 900},2,3,4,5\n"
        f'1,2,3,4,"{long_field}\n'
    )
    items = _items(tmp_path, content)
    assert [(type(i), i.line_number) for i in items] == [
        (MalformedLine, 2),
        (MalformedLine, 102),
        (Record, 103),
        (MalformedLine, 104),
    ]
    assert items[0].reason == (
        "record longer than 1,000 characters (lines 2–101); only its first 1,000 characters"
        " are kept"
    )
    assert items[0].raw_text == f'1,2,3,4,"{long_field}'[:1000]
    assert items[1].reason.startswith("record longer than 1,000 characters (line 102)")
    assert items[3].reason == (
        "broken quoting (unclosed quote opened on line 104; the record runs to the end of the"
        " file, lines 104–203); only its first 1,000 characters are kept"
    )


def test_reader_uses_no_csv_field_limit(tmp_path: Path) -> None:
    """csv's field_size_limit (131,072 by default) plays no part, whatever it is set to."""
    saved = csv.field_size_limit(10)
    try:
        items = _items(tmp_path, HEADER + _csv_line("1", "2", "3", "4", "x," * 200_000))
    finally:
        csv.field_size_limit(saved)
    assert items == [Record(2, ["1", "2", "3", "4", "x," * 200_000])]
