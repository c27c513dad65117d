"""Issue #13, class 1: a quoted field is one field, whatever its length or line count.

A record whose quoted field ran over 50 lines used to be given up as broken quoting, and the lines
inside the quotes were then read as records of their own, and posted; a quoted field longer than
the csv module's field limit (131,072 characters) was rejected too. Now a quote that opens a field
holds until it closes; if it never closes, the rest of the file is one reject naming the line it
opened on; a stray quote (not at a field's start) opens nothing.

Properties (Hypothesis) hold the reader to a reference writer (`csv.writer`) over field lengths
and line counts; the end-to-end test runs `dagster asset materialize` in a subprocess against a
real PostgreSQL and checks that nothing inside quotes is posted.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings
from ledger_backfill_dagster.sources import csv_source
from ledger_backfill_dagster.sources.csv_reader import (
    MalformedLine,
    Record,
    _one_line_record,
    _parsed_record,
    read_records,
)
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    cli_materialize,
    use_settings,
)

ROW = "MASTER,U1,U2,1.00,USD,fiat,PAYMENT,SMUGGLED,2024-01-01T10:00:00Z,,"
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- properties of the reader -----------------------------------------------------------------

# Pieces of field text: quotes, commas, CR, NUL, non-ASCII, and whole lines that look like records.
FRAGMENTS = st.sampled_from(
    ["a", "é", "漢", " ", ",", '"', '""', "\r", "\t", "\x00", ROW, '"x","y"', '1,"2', "\ufeff"]
)
BREAKS = st.sampled_from(["\n", "\r\n"])


@st.composite
def field_texts(draw: st.DrawFn, long: bool = True) -> str:
    """A field: short, or spread over up to 400 lines, or one line past csv's field limit."""
    shape = draw(st.sampled_from(["short", "short", "lines", *(["long"] if long else [])]))
    pieces = draw(st.lists(FRAGMENTS, min_size=1, max_size=6))
    if shape == "short":
        return "".join(pieces[: draw(st.integers(0, len(pieces)))])
    if shape == "lines":
        count = draw(st.integers(1, 400))
        breaks = draw(st.lists(BREAKS, min_size=1, max_size=3))
        return "".join(pieces[i % len(pieces)] + breaks[i % len(breaks)] for i in range(count))
    length = draw(st.integers(100_000, 200_000))
    unit = "".join(pieces)
    return (unit * (length // len(unit) + 1))[:length]


@st.composite
def written_files(draw: st.DrawFn, long: bool = True) -> tuple[str, list[tuple[int, list[str]]]]:
    """A file written by `csv.writer`, and the records (line, fields) it holds."""
    width = draw(st.integers(2, 5))
    field = field_texts(long)
    rows = draw(st.lists(st.lists(field, min_size=width, max_size=width), min_size=1, max_size=5))
    for row in rows:
        # Two things the contract decides otherwise, whatever the writer meant: csv.writer leaves
        # a leading BOM unquoted, and a BOM starting a line rejects it; with LF line ends it
        # leaves a CR unquoted too, and one ending the record reads as the CR of a CRLF.
        if row[0].startswith("\ufeff"):
            row[0] = "x" + row[0]
        if row[-1].endswith("\r"):
            row[-1] += "x"
    terminator = draw(BREAKS)
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    writer.writerow([f"h{i}" for i in range(width)])
    expected = []
    line = 2
    for row in rows:
        start = out.tell()
        writer.writerow(row)
        expected.append((line, row))
        line += out.getvalue()[start:].count("\n")
    text = out.getvalue()
    if draw(st.booleans()):
        text = text.removesuffix(terminator)  # no line break at the end of the file
    return text, expected


def _read(path: Path, text: str) -> list[Record | MalformedLine]:
    path.write_bytes(text.encode("utf-8"))
    return list(read_records(path)[1])


@PROPERTY_SETTINGS
@given(case=written_files())
def test_property_what_csv_writer_writes_is_read_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[str, list[tuple[int, list[str]]]]
) -> None:
    text, expected = case
    items = _read(tmp_path_factory.mktemp("rt") / "x.csv", text)
    assert [(i.line_number, i.fields) for i in items if isinstance(i, Record)] == expected
    assert len(items) == len(expected)  # and nothing else: no reject, no extra record


QUOTE_FREE = st.sampled_from(["a", "é", " ", ",", "\r", ROW, "1,2", '""'])  # '""' is data inside


@st.composite
def unclosed_files(draw: st.DrawFn) -> tuple[str, list[tuple[int, list[str]]], int, str]:
    """Records written by `csv.writer`, then a record whose quote never closes, then lines (some
    looking like records) that hold no lone quote. Returns the text, the records before, the
    faulty record's line and its text."""
    text, expected = draw(written_files(long=False))
    width = len(expected[0][1])
    if not text.endswith("\n"):
        text += "\n"
    line = text.count("\n") + 1
    before = draw(st.lists(st.sampled_from(["", "x", "1.00", " "]), max_size=width - 1))
    lines = draw(st.lists(st.lists(QUOTE_FREE, max_size=5).map("".join), max_size=120))
    breaks = draw(BREAKS)
    rest = ",".join([*before, '"']) + "".join(piece + breaks for piece in ["", *lines])[1:]
    rest = rest.removesuffix(breaks) if draw(st.booleans()) else rest
    return text + rest, expected, line, rest


@PROPERTY_SETTINGS
@given(case=unclosed_files())
def test_property_an_unclosed_quote_is_one_reject_to_the_end_of_the_file(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[str, list, int, str]
) -> None:
    text, expected, line, rest = case
    items = _read(tmp_path_factory.mktemp("uq") / "x.csv", text)
    assert [(i.line_number, i.fields) for i in items[:-1]] == expected
    reject = items[-1]
    assert isinstance(reject, MalformedLine)
    assert reject.line_number == line
    assert reject.reason.startswith(f"broken quoting (unclosed quote opened on line {line};")
    assert reject.raw_text == rest.removesuffix("\n").removesuffix("\r")


@PROPERTY_SETTINGS
@given(
    body=st.text(alphabet=st.sampled_from('ab ,"\r\ufeffé'), max_size=24),
    width=st.integers(1, 4),
)
def test_property_the_quick_path_reads_a_line_as_the_record_parser_does(
    body: str, width: int
) -> None:
    """The csv-module path for one-line records agrees with `_RecordParser` wherever it answers."""
    text = body + "\n"
    stripped = text.removesuffix("\n").removesuffix("\r")  # a CR before the LF ends the line
    quick = _one_line_record(2, text, stripped, True, width)
    if quick is not None and stripped.strip():
        assert quick == _parsed_record(iter(()), 2, text, True, width)


# --- end to end: `dagster asset materialize` against a real database -------------------------

HEADER = [*CANONICAL_FIELDS, "note"]


def _row(reference: str, day: str = "2024-01-01", **values: str) -> list[str]:
    fields = {
        "ledgerId": "",
        "debitAccountId": "U1",
        "creditAccountId": "U2",
        "amount": "1.00",
        "currencyCode": "USD",
        "assetType": "fiat",
        "transactionType": "PAYMENT",
        "referenceId": reference,
        "timestampUtc": f"{day}T10:00:00Z",
        "fxRate": "",
        "metadata": "",
        "note": "",
    }
    return [{**fields, **values}[name] for name in HEADER]


def _line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def _smuggled(tag: str, count: int, pad: int = 0) -> list[str]:
    """Lines that are valid, quote-free records of this layout: posted if read as records."""
    return [",".join(_row(f"SMUGGLED-{tag}-{k}", note="p" * pad)) for k in range(count)]


def _write_sources(folder: Path) -> dict[str, object]:
    folder.mkdir()
    # a.csv: the line reader. A record with 60 lines of JSON metadata and a note of 120 lines
    # (144,000+ characters, past csv's field limit) that look like records; one whose quoted
    # field closes with a field too many; and a quote that never closes.
    note = "\n".join(_smuggled("A", 120, pad=1100))
    metadata = "{\n" + ",\n".join(f'"k{k}": {k}' for k in range(60)) + "\n}"
    wide_note = "\n".join(_smuggled("W", 60))
    tail = "\n".join(_smuggled("U", 70)) + "\n"
    parts = [
        _line(_row("V-1")),  # line 2
        _line(_row("MULTI", metadata=metadata, note=note)),  # lines 3..182
        _line(_row("V-2")),
        _line([*_row("WIDE", note=wide_note), "one too many"]),
        _line(_row("V-3", day="2024-01-02")),
    ]
    first = 2
    lines: dict[str, int] = {}
    for name, part in zip(["V-1", "MULTI", "V-2", "WIDE", "V-3"], parts, strict=True):
        lines[name] = first
        first += part.count("\n")
    lines["UNCLOSED"] = first
    # The note (the last field, empty here) opens with a quote that nothing closes.
    rest = ",".join(_row("UNCLOSED")) + '"never closed\n' + tail
    (folder / "a.csv").write_text(_line(HEADER) + "".join(parts) + rest)
    # b.csv: a 1.5 MiB note on one line, past the fast path's line limit: the line reader.
    long_note = ('say "hi", ' * 160_000)[: 3 * 2**19]
    (folder / "b.csv").write_text(
        _line(HEADER) + _line(_row("LONG-LINE", note=long_note)) + _line(_row("V-4"))
    )
    # c.csv: a 300,000-character note on one line: the fast path (Arrow) reads it.
    fast_note = ("x," * 150_000) + "end"
    (folder / "c.csv").write_text(
        _line(HEADER) + _line(_row("LONG-FAST", day="2024-01-02", note=fast_note))
    )
    return {
        "lines": lines,
        "note": note,
        "metadata": metadata,
        "rest": rest,
        "long_note": long_note,
        "fast_note": fast_note,
    }


@pytest.fixture
def quote_sources(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("accountId,currencyCode,allowNegative\nU1,USD,true\nU2,USD,true\n")
    written = _write_sources(tmp_path / "exports")
    home = dagster_home(tmp_path)
    settings = {"BACKFILL_SOURCE_FILE": str(tmp_path / "exports"), "ACCOUNTS_FILE": str(accounts)}
    use_settings(monkeypatch, backfill_env, settings)
    return {**backfill_env, "DAGSTER_HOME": str(home)}, written


@pytest.mark.slow  # a `dagster` subprocess run: about 30 s on a busy machine
def test_cli_run_posts_nothing_from_inside_quotes(quote_sources, database_url: str) -> None:
    env, written = quote_sources
    lines = written["lines"]
    exports = Path(env["BACKFILL_SOURCE_FILE"])
    assert csv_source._fast_plan(exports / "a.csv") is None
    assert csv_source._fast_plan(exports / "b.csv") is None
    assert csv_source._fast_plan(exports / "c.csv") is not None

    done = cli_materialize("2024-01-01", "2024-01-02", env)
    assert done.returncode == 0, done.stderr[-3000:]

    with psycopg.connect(database_url) as conn:
        entries = {
            reference: (row_id, metadata)
            for reference, row_id, metadata in conn.execute(
                "SELECT reference_id, source_row_id, metadata FROM ledger_entries"
            ).fetchall()
        }
        assert sorted(entries) == sorted(
            ["V-1", "MULTI", "V-2", "V-3", "LONG-LINE", "V-4", "LONG-FAST"]
        )  # not one SMUGGLED-… line
        multi_row, multi_metadata = entries["MULTI"]
        assert multi_row == lines["MULTI"]  # the line the record starts on
        assert multi_metadata == {**json.loads(written["metadata"]), "note": written["note"]}
        assert entries["LONG-LINE"][1] == {"note": written["long_note"]}
        assert entries["LONG-FAST"][1] == {"note": written["fast_note"]}
        rejects = conn.execute(
            "SELECT line_number, reasons, raw_text FROM ledger_backfill_rejects ORDER BY 1"
        ).fetchall()
        assert [(line, reasons) for line, reasons, _ in rejects] == [
            (lines["WIDE"], ["malformed line: wrong field count: expected 12, found 13"]),
            (
                lines["UNCLOSED"],
                [
                    f"malformed line: broken quoting (unclosed quote opened on line"
                    f" {lines['UNCLOSED']}; the record runs to the end of the file, lines"
                    f" {lines['UNCLOSED']}–{lines['UNCLOSED'] + 70})"
                ],
            ),
        ]
        assert rejects[1][2] == written["rest"].rstrip("\n")
        assert_ledger_invariants(conn)

    source = SourceSettings.from_env().reader()
    folder = MonitoringSettings.from_env().reports_path / source.source_key / "reconciliation"
    report = (folder / "2024-01-01_2024-01-02.md").read_text()
    assert "# Reconciliation: RECONCILES" in report
    # read = posted + duplicates + conflicts + rejected: 7 + 0 + 0 + 2
    assert "| 9 | 7 | 0 | 0 | 2 | 2 |" in report
