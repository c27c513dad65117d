"""The CSV scan's Arrow fast path stages exactly what the line reader stages.

Each case scans the same files twice, once as usual and once with `FAST_PATH` off, and compares
the staged rows (sorted by source_row_id: order within a partition file is free), the rejects and
the manifest's counts. Each case also checks which path the file took, so a fallback cannot pass
for a fast read or the other way round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.timestamps import BEFORE_START_DATE, LATER_THAN_RUN_START
from ledger_backfill_dagster.sources import csv_source
from ledger_backfill_dagster.sources.csv_source import (
    ROW_ID_FILE_STRIDE,
    CsvSource,
    _fast_plan,
)
from ledger_backfill_dagster.sources.generate import generate

HEADER = ",".join(CANONICAL_FIELDS)
DAY_KEYS = [f"2024-01-{d:02d}" for d in range(1, 8)]


@dataclass
class Staged:
    rows: pd.DataFrame
    rejects: pd.DataFrame
    manifest: dict[str, object]
    rows_by_partition: dict[str, int]
    placed_by_pandas: int  # chunks handed to `_place`


def scan(
    spec: Path,
    staging: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    fast: bool,
    **options: str,
) -> Staged:
    calls = []
    place = csv_source._place

    def counting_place(frame: pd.DataFrame, *args: object) -> pd.DataFrame:
        calls.append(len(frame))
        return place(frame, *args)

    with monkeypatch.context() as patch:
        patch.setattr(csv_source, "FAST_PATH", fast)
        patch.setattr(csv_source, "_place", counting_place)
        source = CsvSource(spec=str(spec), start_date="2024-01-01", **options)
        result = source.extract(DAY_KEYS, staging)
    scan_dir = staging / source.source_key / "scans" / str(result.details["scan"])
    parts = []
    for file in sorted(scan_dir.glob("partition_key=*/*.parquet")):
        table = pq.ParquetFile(file).read()  # the file alone: no hive key from its path
        key = file.parent.name.removeprefix("partition_key=")
        parts.append(table.append_column("partition_key", pa.array([key] * len(table))))
    schema = csv_source.STAGED_WITH_KEY
    rows = pa.concat_tables(parts) if parts else schema.empty_table()
    assert rows.schema.equals(schema)
    return Staged(
        rows=rows.sort_by("source_row_id").to_pandas(),
        rejects=result.unpartitioned_rejects.sort_values("source_row_id", ignore_index=True),
        manifest=json.loads((scan_dir / "manifest.json").read_text()),
        rows_by_partition=result.rows_by_partition,
        placed_by_pandas=len(calls),
    )


def assert_same(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: str
) -> Staged:
    """Scan fast and slow; assert the staged output is the same; return the fast one."""
    fast = scan(spec, tmp_path / "fast", monkeypatch, fast=True, **options)
    slow = scan(spec, tmp_path / "slow", monkeypatch, fast=False, **options)
    pd.testing.assert_frame_equal(fast.rows, slow.rows)
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects)
    for key in ("rows_read", "rows_by_partition", "layouts", "rejected_unpartitioned"):
        assert fast.manifest[key] == slow.manifest[key], key
    assert fast.rows_by_partition == slow.rows_by_partition
    # The future's moment is the run's start; two scans differ by it, but agree on whether.
    assert (fast.manifest["earliest_future"] is None) == (slow.manifest["earliest_future"] is None)
    return fast


def row(**fields: str) -> dict[str, str]:
    values = {
        "ledgerId": "MASTER",
        "debitAccountId": "ACC-1",
        "creditAccountId": "ACC-2",
        "amount": "10.00",
        "currencyCode": "USD",
        "assetType": "fiat",
        "transactionType": "TRANSFER",
        "referenceId": "R-1",
        "timestampUtc": "2024-01-02T10:00:00Z",
        "fxRate": "",
        "metadata": "",
    }
    return values | fields


def write_rows(path: Path, rows: list[dict[str, str]], newline: str = "\n") -> Path:
    lines = [HEADER] + [",".join(r[f] for f in CANONICAL_FIELDS) for r in rows]
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


def numbered(n: int, **fields: str) -> list[dict[str, str]]:
    return [row(referenceId=f"R-{i}", **fields) for i in range(n)]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks and blocks, so a few hundred rows cross every boundary of both paths."""
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 97)
    monkeypatch.setattr(csv_source, "CHECK_BLOCK_BYTES", 1000)
    monkeypatch.setattr(csv_source, "ARROW_BLOCK_BYTES", 4096)


# --- files the fast path takes ----------------------------------------------------------------


@pytest.mark.parametrize("blocks", ["default", "small"])
def test_generated_canonical_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, blocks: str
) -> None:
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    data = generate(tmp_path / "gen", entries=3000, days=5, start=date(2024, 1, 1))
    assert b'"' in data.entries_file.read_bytes()  # the JSON metadata is quoted
    plan = _fast_plan(data.entries_file)
    assert plan is not None and plan.rows == 3000
    fast = assert_same(data.entries_file, tmp_path, monkeypatch)
    assert fast.placed_by_pandas == 0  # every timestamp canonical: all parsed in Arrow
    assert len(fast.rows) == 3000 and fast.rejects.empty
    assert fast.rows["line_number"].tolist() == list(range(2, 3002))
    assert fast.rows["metadata"].iloc[0] == '{"batch": 0, "note": "generated"}'
    assert fast.rows["metadata"].iloc[1] == ""
    assert fast.rows["fxRate"].eq("").all()  # an empty field is "", not null


def test_empty_fields_and_quoted_commas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        row(ledgerId="", fxRate="", metadata="", referenceId="R-1"),
        row(amount="", currencyCode="", referenceId="R-2"),
        row(metadata='"{""a"": 1, ""b"": ""x,y""}"', referenceId='"R-3"'),
        row(metadata='""', referenceId='"R,4"', assetType='""""'),
        row(timestampUtc="", referenceId="R-5"),  # rejected: empty timestamp
        row(referenceId=" spaced ", ledgerId="é ü 漢"),
    ]
    path = write_rows(tmp_path / "x.csv", rows)
    assert _fast_plan(path) is not None
    fast = assert_same(path, tmp_path, monkeypatch)
    assert fast.rows["referenceId"].tolist() == ["R-1", "R-2", "R-3", "R,4", " spaced "]
    assert fast.rows["assetType"].tolist()[3] == '"'
    assert fast.rows["ledgerId"].tolist()[0] == "" and pd.notna(fast.rows["ledgerId"].iloc[0])
    assert fast.rejects["line_number"].tolist() == [6]


def test_bom_at_start_no_final_newline_and_header_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bom.csv"
    write_rows(path, numbered(3))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().rstrip(b"\n"))
    assert _fast_plan(path) is not None
    assert len(assert_same(path, tmp_path / "a", monkeypatch).rows) == 3

    header_only = tmp_path / "empty.csv"
    header_only.write_text(HEADER + "\n")
    assert _fast_plan(header_only) is not None
    fast = assert_same(header_only, tmp_path / "b", monkeypatch)
    assert fast.rows.empty and fast.manifest["rows_read"] == 0


def test_other_timestamp_shapes_go_to_pandas_per_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    shapes = [
        "2024-01-02T10:00:00+02:00",
        "2024-01-02T10:00:00",  # naive: SOURCE_TIMEZONE
        "2024-01-02T10:00:00.123456Z",
        "2024-01-02 10:00:00Z",
        "2024-01-02t10:00:00z",
        "2024-01-03T01:30:00-05:00",
        " 2024-01-02T10:00:00Z ",
        "2024-02-30T10:00:00Z",  # strptime would roll it over to March 1
        "2024-01-02T23:59:60Z",
        "2024-01-02T24:00:00Z",
        "2024-03-31T02:30:00",  # does not exist in Stockholm (DST)
        "2024-01-02",
        "not a time",
    ]
    rows = numbered(600)
    for i, shape in enumerate(shapes):
        rows[150 + i * 17]["timestampUtc"] = shape  # spread over a few chunks, most stay canonical
    path = write_rows(tmp_path / "x.csv", rows)
    assert _fast_plan(path) is not None
    fast = assert_same(path, tmp_path, monkeypatch, source_timezone="Europe/Stockholm")
    assert 0 < fast.placed_by_pandas <= len(shapes)  # only the chunks holding them
    assert len(fast.rows) + len(fast.rejects) == 600


def test_rows_before_the_start_and_in_the_future_are_rejected_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    rows = numbered(300)
    rows[5]["timestampUtc"] = "2023-12-31T23:59:59Z"
    rows[130]["timestampUtc"] = "2099-01-01T00:00:00Z"
    rows[250]["timestampUtc"] = "1000-01-01T00:00:00Z"  # beyond pandas' range
    rows[260]["timestampUtc"] = "9999-12-31T23:59:59Z"
    path = write_rows(tmp_path / "x.csv", rows)
    fast = assert_same(path, tmp_path, monkeypatch)
    reasons = dict(zip(fast.rejects["line_number"], fast.rejects["reasons"], strict=True))
    assert {line: list(r) for line, r in reasons.items()} == {
        7: [BEFORE_START_DATE],
        132: [LATER_THAN_RUN_START],
        252: [BEFORE_START_DATE],
        262: [LATER_THAN_RUN_START],
    }
    assert fast.manifest["earliest_future"].startswith("2099-01-01")


def test_legacy_layout_with_extra_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = "ledger,debit_account,credit_account,amount,currency,timestamp,branch,memo"
    lines = [
        "L1,A,B,1.00,USD,2024-01-02T10:00:00Z,north,",
        'L1,A,B,2.00,USD,2024-01-03T10:00:00Z,south,"says ""hi"", é"',
        "L1,A,B,3.00,USD,2024-01-03T10:00:00+01:00,,x",
    ]
    path = tmp_path / "legacy.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    assert _fast_plan(path) is not None
    fast = assert_same(path, tmp_path, monkeypatch)
    assert fast.manifest["layouts"] == {str(path): "legacy"}
    assert json.loads(fast.rows["extra_columns"].iloc[1]) == {
        "branch": "south",
        "memo": 'says "hi", é',
    }
    assert fast.rows["metadata"].isna().all()  # no column feeds it: null, not ""


def test_declared_column_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = {"from": "debitAccountId", "to": "creditAccountId", "amt": "amount"}
    mapping |= {"ccy": "currencyCode", "at": "timestampUtc", "ref": "referenceId"}
    column_map = tmp_path / "map.json"
    column_map.write_text(json.dumps(mapping))
    path = tmp_path / "x.csv"
    path.write_text(" from , to,amt,ccy,at,ref\nA,B,1,USD,2024-01-02T00:00:00Z,R1\n")
    fast = assert_same(path, tmp_path, monkeypatch, column_map_file=str(column_map))
    assert fast.manifest["layouts"] == {str(path): "declared"}


# --- files that go to the line reader ---------------------------------------------------------

FALLBACKS = {
    "quoted line break": b'%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,"x\ny"\n',
    "crlf": b"%s\r\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\r\n",
    "bare cr in a field": b"%s\nL,A,B,1,USD,fiat,T,R\r1,2024-01-02T00:00:00Z,,\n",
    "blank line": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\n\nL,A,B,2,USD,,,R2,"
    b"2024-01-03T00:00:00Z,,\n",
    "trailing blank line": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\n\n",
    "blank line before the header": b"\n%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\n",
    "whitespace line": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\n   \n",
    "too few fields": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,\nL,A,B,2,USD,,,R2,"
    b"2024-01-03T00:00:00Z,,\n",
    "too many fields": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,,\n",
    "stray quote": b'%s\nL,A,B,1,USD,fiat,T,R"1,2024-01-02T00:00:00Z,,\n',
    "text after a closing quote": b'%s\nL,A,B,1,USD,fiat,T,"R"1,2024-01-02T00:00:00Z,,\n',
    "unclosed quote": b'%s\nL,A,B,1,USD,fiat,T,"R1,2024-01-02T00:00:00Z,,\nL,A,B,2,USD,,,R2,'
    b"2024-01-03T00:00:00Z,,\n",
    "invalid utf-8": b"%s\nL,A,B,1,USD,fiat,T,R\xff1,2024-01-02T00:00:00Z,,\n",
    "bom inside": b"%s\n\xef\xbb\xbfL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,\n",
    "nul": b"%s\nL,A,B,1,USD,fiat,T,R\x001,2024-01-02T00:00:00Z,,\n",
    # Issue #13: a quoted field over many lines that look like records is one field; a quote that
    # never closes takes the rest of the file; quotes inside an unquoted field open nothing.
    "quoted field of 60 record-like lines": b'%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,"'
    + b"L,A,B,2,USD,fiat,T,R2,2024-01-02T00:00:00Z,,\n" * 60
    + b'"\nL,A,B,3,USD,,,R3,2024-01-03T00:00:00Z,,\n',
    "unclosed quote, then record-like lines": b'%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z,,"'
    + b"\nL,A,B,2,USD,fiat,T,R2,2024-01-02T00:00:00Z,," * 60,
    "quote reopened on a record's second line": b"%s\nL,A,B,1,USD,fiat,T,R1,2024-01-02T00:00:00Z"
    b',"x\ny","z\nL,A,B,2,USD,,,R2,2024-01-03T00:00:00Z,,\n',
    "doubled quotes in an unquoted field": b'%s\nL,A,B,1,USD,fiat,T,R""1,2024-01-02T00:00:00Z,,\n',
    "a quote after a space": b'%s\nL,A,B,1,USD,fiat,T, "R1",2024-01-02T00:00:00Z,,\n',
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_files_the_fast_path_declines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(FALLBACKS[case] % HEADER.encode())
    assert _fast_plan(path) is None
    assert_same(path, tmp_path, monkeypatch)


def test_a_line_longer_than_the_limit_goes_to_the_line_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_source, "MAX_FAST_LINE_BYTES", 200)
    monkeypatch.setattr(csv_source, "CHECK_BLOCK_BYTES", 64)
    path = write_rows(tmp_path / "x.csv", [row(metadata="m" * 300)])
    assert _fast_plan(path) is None
    assert_same(path, tmp_path, monkeypatch)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def test_a_quoted_field_past_csvs_field_limit_is_read_fast_and_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300,000 characters, past the csv module's default limit (131,072) but within a block."""
    metadata = '{"note": "' + 'a, \\"b\\" ' * 30_000 + '"}'
    path = write_rows(tmp_path / "x.csv", [row(metadata=_quoted(metadata)), row(referenceId="R-2")])
    assert _fast_plan(path) is not None
    fast = assert_same(path, tmp_path, monkeypatch)
    assert fast.rows["metadata"].tolist() == [metadata, ""]


def test_a_line_past_the_fast_limit_is_read_whole_by_the_line_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = '{"note": "' + "x, " * (csv_source.MAX_FAST_LINE_BYTES // 3 + 1) + '"}'
    path = write_rows(tmp_path / "x.csv", [row(metadata=_quoted(metadata)), row(referenceId="R-2")])
    assert _fast_plan(path) is None
    fast = assert_same(path, tmp_path, monkeypatch)
    assert fast.rows["metadata"].tolist() == [metadata, ""]


def test_folder_mixing_fast_and_fallback_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    write_rows(folder / "a.csv", numbered(250))
    write_rows(folder / "b_crlf.csv", numbered(120), newline="\r\n")
    broken = numbered(200)
    broken[40]["amount"] = "1,2"  # one field too many
    write_rows(folder / "c_broken.csv", broken)
    write_rows(folder / "d.csv", numbered(150, timestampUtc="2024-01-04T00:00:00+00:00"))
    plans = {p.name: _fast_plan(p) is not None for p in sorted(folder.glob("*.csv"))}
    assert plans == {"a.csv": True, "b_crlf.csv": False, "c_broken.csv": False, "d.csv": True}
    fast = assert_same(folder, tmp_path, monkeypatch)
    assert fast.manifest["rows_read"] == 250 + 120 + 200 + 150
    assert (fast.rows["source_row_id"] // ROW_ID_FILE_STRIDE).value_counts().to_dict() == {
        0: 250,
        1: 120,
        2: 199,
        3: 150,
    }
    assert fast.rejects["source_row_id"].tolist() == [2 * ROW_ID_FILE_STRIDE + 42]


def test_arrow_disagreeing_with_the_check_redoes_the_scan_slowly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_rows(tmp_path / "x.csv", numbered(50))
    wrong = csv_source._FastPlan(_fast_plan(path).header, 51)  # one row Arrow will not find
    monkeypatch.setattr(csv_source, "_fast_plan", lambda _: wrong)
    fast = assert_same(path, tmp_path, monkeypatch)
    assert len(fast.rows) == 50


# --- property: whatever the bytes, both paths agree ------------------------------------------

FIELD_PIECES = st.sampled_from(["a", "b", "é", " ", ",", '"', '""', "\n", "\r\n", "x,y"])
PLAIN_FIELD = st.text(alphabet="abcé 0", max_size=4)
QUOTED_FIELD = st.lists(st.sampled_from(["a", ",", '""', " ", "é"]), max_size=4).map(
    lambda parts: '"' + "".join(parts) + '"'
)
JUNK_FIELD = st.lists(FIELD_PIECES, max_size=3).map("".join)
# A quoted field over up to 80 lines that look like records (issue #13): one field, never records.
MANY_LINES_FIELD = st.integers(0, 80).map(lambda n: '"' + "L,A,B,1,USD,,,R,,,\n" * n + 'x"')
STAMPS = st.sampled_from(
    [
        "2024-01-02T03:04:05Z",
        "2024-01-05T23:59:59Z",
        "2024-01-02T03:04:05+01:00",
        "2024-01-02T03:04:05",
        "2023-12-31T23:00:00Z",
        "2099-01-01T00:00:00Z",
        "2024-02-31T00:00:00Z",
        "",
    ]
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """Half the files are well formed (the fast path's), half may hold anything."""
    messy = draw(st.booleans())
    field = st.one_of(PLAIN_FIELD, QUOTED_FIELD, *([JUNK_FIELD] if messy else []))
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        fields = [draw(field) for _ in CANONICAL_FIELDS]
        fields[CANONICAL_FIELDS.index("timestampUtc")] = draw(STAMPS)
        if messy and draw(st.integers(0, 9)) == 0:
            fields = fields[: draw(st.integers(1, len(fields)))]  # a short line
        if messy and draw(st.integers(0, 9)) == 0:
            fields[draw(st.integers(0, len(fields) - 1))] = draw(MANY_LINES_FIELD)
        lines.append(",".join(fields))
    end = draw(st.sampled_from(["\n", "", "\n\n"] if messy else ["\n", ""]))
    return ("\n".join([HEADER, *lines]) + end).encode()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=csv_files())
def test_property_fast_and_slow_paths_agree(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    work = tmp_path_factory.mktemp("prop")
    path = work / "x.csv"
    path.write_bytes(content)
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 3)
    monkeypatch.setattr(csv_source, "CHECK_BLOCK_BYTES", 37)
    assert_same(path, work, monkeypatch)


@pytest.mark.parametrize("fast", [True, False])
def test_one_chunk_spanning_more_than_1024_days(tmp_path: Path, fast: bool) -> None:
    """A small export over ten years fits one chunk that spans 3,650 days: pyarrow's dataset
    writer refuses more than 1,024 partitions per batch unless told otherwise."""
    data = tmp_path / "data"
    generate(data, entries=4000, days=3650, accounts=10, start=date(2015, 1, 1), seed=3)
    csv_source.FAST_PATH, saved = fast, csv_source.FAST_PATH
    try:
        source = CsvSource(spec=str(data / "ledger_export.csv"), start_date="2015-01-01")
        keys = [str(d.date()) for d in pd.date_range("2015-01-01", periods=3650)]
        result = source.extract(keys, tmp_path / "staging")
    finally:
        csv_source.FAST_PATH = saved
    assert sum(result.rows_by_partition.values()) == 4000
    assert len(result.staged) == sum(1 for n in result.rows_by_partition.values() if n)
