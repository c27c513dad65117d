"""The CSV reader: one bad line never takes the file down, and every line keeps its number."""

from __future__ import annotations

from pathlib import Path

from ledger_backfill_dagster.sources.csv_reader import MalformedLine, Record, read_records


def _read(tmp_path: Path, content: bytes) -> tuple[list[str], list[Record | MalformedLine]]:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    header, items = read_records(path)
    return header, list(items)


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
        b'1,"unclosed,3\n'  # broken quoting: must not swallow the next lines
        b"\xff\xfe,2,3\n"  # invalid UTF-8
        b"\xef\xbb\xbf1,2,3\n"  # BOM inside the file
        b'1,ab"c,3\n'  # stray quote
        b"4,5,6\n"
    )
    _, items = _read(tmp_path, content)
    good = [(i.line_number, i.fields) for i in items if isinstance(i, Record)]
    bad = {i.line_number: i.reason for i in items if isinstance(i, MalformedLine)}
    assert good == [(2, ["1", "2", "3"]), (9, ["4", "5", "6"])]
    assert set(bad) == {3, 4, 5, 6, 7, 8}
    assert "expected 3, found 2" in bad[3]
    assert "found 4" in bad[4]
    assert "quot" in bad[5]
    assert bad[6] == "invalid UTF-8"
    assert "byte-order mark" in bad[7]
    assert "quot" in bad[8]
