"""The CSV Source Reader: one file, a folder of `*.csv`, or a glob, read in a stable order.

The whole source is scanned once per version of its files and split into one Parquet dataset per
UTC day, so a backfill over any number of partitions reads each row once: O(rows), not
O(rows × partitions). The scan is cached under the staging folder and keyed by the files' paths,
sizes and modification times, plus the settings that change how rows are placed.

Two readers, one result. The line reader (`csv_reader.read_records`) survives any malformed line
but is slow, being Python. So each file is first checked in bounded blocks (`_fast_plan`,
vectorised, without splitting fields): when both readers must see the same records on the same
lines, the file is read with pyarrow's streaming CSV reader instead, an order of magnitude faster
(docs/performance.md, 'Why the code is shaped this way'). That holds when the file is strict
UTF-8 with no CR, NUL or byte-order mark (one at the very start is stripped, as the line reader
does), its first line is the header, no line is blank, every line has exactly the header's
number of fields, every field holding a quote is quoted whole on its line, and no line is as long
as `MAX_FAST_LINE_BYTES`. Any other file (CRLF, quoted line breaks, a stray quote, a short line,
a longer line, …) goes through the line reader, unchanged, which reads a quoted field whole
whatever its length or line count. Data row k of a file checked this way is on line k + 2.

In the fast path, a chunk whose timestamps all have the canonical `YYYY-MM-DDTHH:MM:SSZ` shape
and lie within [BACKFILL_START_DATE, run start] is parsed in Arrow; any other chunk is converted
to the line reader's pandas frame and placed by the same code (`_place`), rejects included. Should
Arrow ever disagree with the check (fail, or read another number of rows), the whole scan is
redone with the line reader, so no output mixes a half-read file. `FAST_PATH = False` forces the
line reader everywhere.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
from filelock import FileLock

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS, raw_fields
from ledger_backfill_dagster.entries.timestamps import (
    BEFORE_START_DATE,
    LATER_THAN_RUN_START,
    parse_utc,
)
from ledger_backfill_dagster.lib.errors import InputError
from ledger_backfill_dagster.sources.base import (
    REJECT_COLUMNS,
    STAGED_SCHEMA,
    ExtractResult,
    SourceReader,
)
from ledger_backfill_dagster.sources.csv_reader import (
    BOM,
    HeaderError,
    MalformedLine,
    Record,
    read_records,
)
from ledger_backfill_dagster.sources.layout import Layout, detect_layout, load_column_map

log = logging.getLogger(__name__)

# Rows parsed per chunk. Peak memory follows it, not the size of the source, and smaller chunks
# were no slower (docs/performance.md, 'Why the code is shaped this way').
CHUNK_ROWS = 50_000
MAX_DAYS_PER_CHUNK = 1_000_000  # days one chunk of rows may span (about 2,700 years)
ROW_ID_FILE_STRIDE = 10**12  # source_row_id = file index × stride + line number

FAST_PATH = True  # False: every file goes through the line reader (tests compare both paths)
CHECK_BLOCK_BYTES = 8 * 2**20  # the pre-check reads this much at a time: bounded memory
ARROW_BLOCK_BYTES = 4 * 2**20  # Arrow parses this much at a time (~40k canonical rows)
MAX_FAST_LINE_BYTES = 2**20  # a longer line goes to the line reader (Arrow wants it in a block)

STAGED_WITH_KEY = STAGED_SCHEMA.append(pa.field("partition_key", pa.string()))
# What the fast path builds before placing: the staged columns without the parsed timestamp.
RAW_SCHEMA = STAGED_SCHEMA.remove(STAGED_SCHEMA.get_field_index("timestamp_utc"))
BOM_BYTES = BOM.encode()
CANONICAL_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The canonical shape with each field in range. strptime still rolls an impossible day of the
# month over (2022-02-30 → 03-02), so the day is compared after parsing too.
CANONICAL_SHAPE = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
)
_LF, _COMMA, _QUOTE = ord("\n"), ord(","), ord('"')


class SourceError(InputError):
    """The source as a whole cannot be read (missing file, unusable header)."""


class _FastPathFailed(RuntimeError):
    """Arrow read a file otherwise than its pre-check promised: the scan is redone slowly."""


def resolve_files(spec: str) -> list[Path]:
    """A file, a folder (its *.csv files) or a glob, sorted by path for a stable order."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.csv") if p.is_file())
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    else:
        files = [path] if path.is_file() else []
    if not files:
        raise SourceError(f"BACKFILL_SOURCE_FILE {spec!r} matches no CSV file")
    return [f.resolve() for f in files]


def check_timezone(name: str) -> None:
    """SOURCE_TIMEZONE must name an IANA zone: a typo would misplace every naive timestamp."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SourceError(f"SOURCE_TIMEZONE {name!r} is not an IANA time zone name") from exc


@dataclass
class CsvSource(SourceReader):
    spec: str
    start_date: str
    source_timezone: str = "UTC"
    column_map_file: str | None = None
    explicit_source_id: str | None = None
    source_type: str = "CSV"

    @property
    def source_id(self) -> str:
        if self.explicit_source_id:
            return self.explicit_source_id
        path = Path(self.spec).expanduser()
        return str(path.resolve()) if path.exists() else self.spec

    def fingerprint(self, files: list[Path]) -> str:
        digest = hashlib.sha256()
        for f in files:
            stat = f.stat()
            digest.update(f"{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        column_map = Path(self.column_map_file).read_bytes() if self.column_map_file else b""
        digest.update(column_map + f"\0{self.source_timezone}\0{self.start_date}".encode())
        digest.update("\0".join(STAGED_SCHEMA.names).encode())  # a scan of another layout
        return digest.hexdigest()[:24]

    def extract(self, partition_keys: list[str], staging_root: Path) -> ExtractResult:
        check_timezone(self.source_timezone)
        files = resolve_files(self.spec)
        root = staging_root / self.source_key
        root.mkdir(parents=True, exist_ok=True)
        scan_dir = root / "scans" / self.fingerprint(files)
        with FileLock(str(root / "scan.lock")):
            if _future_has_come(scan_dir / "manifest.json"):
                shutil.rmtree(scan_dir)  # rows rejected as "in the future" may be due now
            if not (scan_dir / "manifest.json").exists():
                self._scan(files, scan_dir)
                _drop_other_scans(scan_dir)
        manifest = json.loads((scan_dir / "manifest.json").read_text())
        staged = {
            key: scan_dir / f"partition_key={key}"
            for key in partition_keys
            if (scan_dir / f"partition_key={key}").exists()
        }
        return ExtractResult(
            source_id=self.source_id,
            source_type=self.source_type,
            staged=staged,
            rows_by_partition={k: manifest["rows_by_partition"].get(k, 0) for k in partition_keys},
            unpartitioned_rejects=pd.read_parquet(scan_dir / "rejects.parquet"),
            rows_read=manifest["rows_read"],
            details={"files": len(files), "layouts": manifest["layouts"], "scan": scan_dir.name},
        )

    def _scan(self, files: list[Path], scan_dir: Path) -> None:
        tmp = scan_dir.with_name(scan_dir.name + ".tmp")
        column_map = load_column_map(self.column_map_file)
        run_start = pd.Timestamp(datetime.now(UTC))
        first_day = pd.Timestamp(date.fromisoformat(self.start_date), tz="UTC")

        def attempt(fast: bool) -> _Scan:
            scan = _Scan(self.source_timezone, first_day, run_start, column_map, fast)
            _write_dataset(scan.batches(files), tmp)
            return scan

        try:
            scan = attempt(FAST_PATH)
        except _FastPathFailed as exc:
            log.warning("CSV fast path gave up (%s); scanning again with the line reader", exc)
            scan = attempt(False)
        reject_frame = pd.DataFrame(scan.rejects, columns=REJECT_COLUMNS)
        reject_frame.to_parquet(tmp / "rejects.parquet", index=False)
        manifest = {
            "source_id": self.source_id,
            "files": [str(f) for f in files],
            "layouts": scan.layouts,
            "rows_read": scan.rows_read,
            "rows_by_partition": scan.counts,
            "rejected_unpartitioned": len(reject_frame),
            "earliest_future": min(scan.future).isoformat() if scan.future else None,
            "scanned_at": datetime.now(UTC).isoformat(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(scan_dir, ignore_errors=True)
        tmp.rename(scan_dir)


def _write_dataset(batches: Iterator[pa.RecordBatch], tmp: Path) -> None:
    """Write the staged rows into a fresh `tmp`, one hive partition per UTC day."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pads.write_dataset(
        batches,
        tmp,
        schema=STAGED_WITH_KEY,
        format="parquet",
        partitioning=pads.partitioning(pa.schema([("partition_key", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
        max_open_files=256,
        # pyarrow refuses a batch spanning more than 1,024 days by default; a small export of
        # ten years in one chunk does (one partition per day since BACKFILL_START_DATE).
        max_partitions=MAX_DAYS_PER_CHUNK,
        existing_data_behavior="overwrite_or_ignore",
    )


@dataclass
class _Scan:
    """One pass over the source's files, and what it counted and rejected on the way."""

    source_timezone: str
    first_day: pd.Timestamp
    run_start: pd.Timestamp
    column_map: dict[str, str] | None
    fast: bool
    rejects: list[dict[str, object]] = field(default_factory=list)
    future: list[pd.Timestamp] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)
    rows_read: int = 0

    def batches(self, files: list[Path]) -> Iterator[pa.RecordBatch]:
        for index, path in enumerate(files):
            base = index * ROW_ID_FILE_STRIDE
            plan = _fast_plan(path) if self.fast else None
            if plan is None:
                yield from self._line_reader_batches(path, base)
            else:
                yield from self._arrow_reader_batches(path, base, plan)

    def _line_reader_batches(self, path: Path, base: int) -> Iterator[pa.RecordBatch]:
        """The slow path: any file, malformed lines included."""
        try:
            header, items = read_records(path)
        except HeaderError as exc:
            raise SourceError(str(exc)) from exc
        layout = detect_layout(header, self.column_map)
        self.layouts[str(path)] = layout.name
        while chunk := list(islice(items, CHUNK_ROWS)):
            self.rows_read += len(chunk)
            frame = _chunk_frame(chunk, header, layout, path, base, self.rejects)
            if frame.empty:
                continue
            yield from self._placed(frame)

    def _arrow_reader_batches(
        self, path: Path, base: int, plan: _FastPlan
    ) -> Iterator[pa.RecordBatch]:
        """The fast path, for a file `_fast_plan` found plain: the same rows as the slow path."""
        layout = detect_layout(plan.header, self.column_map)
        self.layouts[str(path)] = layout.name
        if plan.rows == 0:
            return  # a header alone: Arrow would call the file empty
        line = 2  # the header is line 1 and no line is blank: data row k is on line k + 2
        for batch in _arrow_batches(path, plan.header):
            for offset in range(0, batch.num_rows, CHUNK_ROWS):
                chunk = batch.slice(offset, CHUNK_ROWS)
                raw = _raw_batch(chunk, layout, path, base, line)
                line += chunk.num_rows
                self.rows_read += chunk.num_rows
                stamps = _canonical_stamps(
                    raw.column("timestampUtc"), self.first_day, self.run_start
                )
                if stamps is None:  # another shape, or out of range: the slow path's placing
                    yield from self._placed(_line_reader_frame(raw))
                else:
                    yield self._keyed(raw, stamps)
        if line - 2 != plan.rows:
            raise _FastPathFailed(f"{path}: Arrow read {line - 2} rows, expected {plan.rows}")

    def _placed(self, frame: pd.DataFrame) -> Iterator[pa.RecordBatch]:
        """Parse and place a chunk with pandas (`_place`), as the line reader always has."""
        frame = _place(
            frame, self.source_timezone, self.first_day, self.run_start, self.rejects, self.future
        )
        for key, n in frame["partition_key"].value_counts().items():
            self.counts[str(key)] = self.counts.get(str(key), 0) + int(n)
        yield from pa.Table.from_pandas(
            frame, schema=STAGED_WITH_KEY, preserve_index=False
        ).to_batches()

    def _keyed(self, raw: pa.RecordBatch, stamps: pa.Array) -> pa.RecordBatch:
        """Add the parsed timestamps and their UTC days. Formats each distinct day once, like
        `utc_days`: strftime per row is slow (docs/performance.md, 'Why the code is shaped
        this way')."""
        days = pc.cast(stamps, pa.date32()).dictionary_encode()
        names = pa.array([day.isoformat() for day in days.dictionary.to_pylist()], pa.string())
        per_day = np.bincount(days.indices.to_numpy(), minlength=len(names))
        for name, n in zip(names.to_pylist(), per_day.tolist(), strict=True):
            if n:
                self.counts[name] = self.counts.get(name, 0) + n
        return pa.RecordBatch.from_arrays(
            [*raw.columns, stamps, names.take(days.indices)], schema=STAGED_WITH_KEY
        )


@dataclass(frozen=True)
class _FastPlan:
    header: list[str]
    rows: int  # data lines after the header


def _fast_plan(path: Path) -> _FastPlan | None:
    """The header and data line count if `path` is plain enough for Arrow to read exactly as the
    line reader would (see the module docstring); None sends the file to the line reader.
    Reads the file in blocks cut at line ends, so memory stays bounded."""
    header: list[str] | None = None
    lines = 0
    carry = b""
    at_start = True
    with path.open("rb") as handle:
        while True:
            block = handle.read(CHECK_BLOCK_BYTES)
            data = carry + block
            if at_start:
                # The line reader strips a BOM at the very start only; so does Arrow.
                data = data.removeprefix(BOM_BYTES)
                at_start = False
            cut = data.rfind(b"\n") + 1 if block else len(data)
            piece, carry = data[:cut], data[cut:]
            if len(carry) >= _line_limit():
                return None
            if piece:
                header = header or _plan_header(piece)
                if header is None:
                    return None
                count = _count_lines(piece, len(header))
                if count is None:
                    return None
                lines += count
            if not block:
                break
    return _FastPlan(header, lines - 1) if header is not None else None


def _plan_header(piece: bytes) -> list[str] | None:
    """The header as the line reader reads it, if it is on line 1 (no blank line before it)."""
    end = piece.find(b"\n")
    try:
        text = piece[: end if end >= 0 else len(piece)].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return None
    try:
        header = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        return None
    # Two fields at least: with one, a whitespace-only line (skipped by the line reader) would
    # pass the field count check below.
    return [name.strip() for name in header] if len(header) >= 2 else None


def _line_limit() -> int:
    """Longer lines go to the line reader: Arrow needs each line inside one block, and such lines
    are rare enough that the slow path costs nothing. (The line reader has no field limit; the
    csv module's `field_size_limit` plays no part in either path.)"""
    return MAX_FAST_LINE_BYTES


def _count_lines(piece: bytes, width: int) -> int | None:
    """The number of lines in `piece` (whole lines, the last one maybe without its LF) if each
    is a record of `width` fields that both readers split alike; else None."""
    if b"\r" in piece or b"\x00" in piece:
        return None  # CRLF or a bare CR, NUL: the line reader's business
    # A BOM is not ASCII; searching for it costs more than the ASCII test.
    if not piece.isascii():
        if BOM_BYTES in piece:
            return None  # a BOM inside the file makes its line malformed
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return None
    data = np.frombuffer(piece, dtype=np.uint8)
    ends = np.flatnonzero(data == _LF)
    if not piece.endswith(b"\n"):
        ends = np.append(ends, len(piece))
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    if int(lengths.min()) == 0 or int(lengths.max()) >= _line_limit():
        return None  # a blank line (skipped by the line reader: line numbers shift), or too long
    commas = np.flatnonzero(data == _COMMA)
    fields = np.diff(np.searchsorted(commas, ends), prepend=0) + 1
    quotes = np.flatnonzero(data == _QUOTE)
    if quotes.size:
        inside = _commas_inside_quotes(data, quotes, commas, starts, ends)
        if inside is None:
            return None
        fields -= inside
    return len(ends) if bool((fields == width).all()) else None


def _commas_inside_quotes(
    data: np.ndarray, quotes: np.ndarray, commas: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray | None:
    """Per line, the commas that are data inside quoted fields; None unless every field holding
    a quote is quoted whole, its quotes doubled, on one line (`"…""…"` between commas). Python's
    csv module (strict) and Arrow read those alike; a stray quote (`ab"c`, `"ab"c`, an unclosed
    one) goes to the line reader. Vectorised: a canonical export quotes every tenth line."""
    line = np.searchsorted(ends, quotes)  # the line each quote is on
    if (np.bincount(line) % 2).any():
        return None  # a line with an odd number of quotes: a quote left open
    # Quotes alternate opening and closing along a line; a doubled quote inside a field is a
    # closing one at once followed by an opening one.
    opening = (np.arange(len(quotes)) - np.searchsorted(line, line)) % 2 == 0
    opens, closes = quotes[opening], quotes[~opening]
    before = data[np.maximum(opens - 1, 0)]
    opens_ok = (opens == starts[line[opening]]) | (before == _COMMA) | (before == _QUOTE)
    after = data[np.minimum(closes + 1, len(data) - 1)]
    closes_ok = (closes + 1 == ends[line[~opening]]) | (after == _COMMA) | (after == _QUOTE)
    if not (opens_ok.all() and closes_ok.all()):
        return None
    # Each opening quote pairs with the next closing one, on the same line.
    inside = np.searchsorted(commas, closes) - np.searchsorted(commas, opens)
    return np.bincount(line[opening], weights=inside, minlength=len(ends)).astype(np.int64)


def _arrow_batches(path: Path, header: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's records, every field as text ("" for an empty one, as the line reader gives).
    An Arrow error means the pre-check was wrong about the file: `_FastPathFailed`."""
    read = pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=ARROW_BLOCK_BYTES)
    parse = pacsv.ParseOptions(delimiter=",", quote_char='"', double_quote=True, escape_char=False)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    # An OSFile, not the path: given a path, Arrow would decompress `*.gz` and the like.
    with pa.OSFile(str(path)) as source:
        try:
            reader = pacsv.open_csv(
                source, read_options=read, parse_options=parse, convert_options=convert
            )
        except pa.ArrowInvalid as exc:
            raise _FastPathFailed(f"{path}: {exc}") from exc
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _FastPathFailed(f"{path}: {exc}") from exc
            yield batch


def _raw_batch(
    batch: pa.RecordBatch, layout: Layout, path: Path, base: int, first_line: int
) -> pa.RecordBatch:
    """Arrow records → the columns `_chunk_frame` builds from the same records."""
    n = batch.num_rows
    lines = np.arange(first_line, first_line + n, dtype=np.int64)
    arrays: list[pa.Array] = [pa.array(base + lines), pa.repeat(str(path), n), pa.array(lines)]
    for name in SOURCE_FIELDS:
        column = layout.column_for(name)
        arrays.append(batch.column(column) if column else pa.nulls(n, pa.string()))
    extras = layout.extra_columns
    if extras:  # rare; built row by row exactly as `_chunk_frame` does
        values = zip(*(batch.column(c).to_pylist() for c in extras), strict=True)
        dumped = [json.dumps(dict(zip(extras, vals, strict=True))) for vals in values]
        arrays.append(pa.array(dumped, pa.string()))
    else:
        arrays.append(pa.nulls(n, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=RAW_SCHEMA)


def _canonical_stamps(
    text: pa.Array, first_day: pd.Timestamp, run_start: pd.Timestamp
) -> pa.Array | None:
    """UTC timestamps if every value is `YYYY-MM-DDTHH:MM:SSZ` and within [first_day,
    run_start]; else None, and `_place` handles the chunk (other shapes, rejects)."""
    if len(text) == 0 or not pc.all(pc.match_substring_regex(text, CANONICAL_SHAPE)).as_py():
        return None
    parsed = pc.strptime(text, format=CANONICAL_FORMAT, unit="us", error_is_null=True)
    if parsed.null_count:
        return None
    written_day = pc.cast(pc.utf8_slice_codeunits(text, 8, 10), pa.int64())
    if not pc.all(pc.equal(pc.day(parsed), written_day)).as_py():
        return None  # an impossible day that strptime rolled over: pandas decides
    micros = pc.min_max(parsed.cast(pa.int64()))
    # pandas' Timestamp.value is in nanoseconds; both bounds are whole microseconds.
    if micros["min"].as_py() < first_day.value // 1000 or micros["max"].as_py() > (
        run_start.value // 1000
    ):
        return None
    return parsed.cast(pa.timestamp("us", tz="UTC"))


def _line_reader_frame(raw: pa.RecordBatch) -> pd.DataFrame:
    """The pandas frame `_chunk_frame` would have built for these rows, dtypes included."""
    frame = raw.to_pandas()
    for name in (*SOURCE_FIELDS, "extra_columns"):
        frame[name] = frame[name].astype("string")
    return frame


def _future_has_come(manifest: Path) -> bool:
    """A cached scan rejected rows as later than its run's start, and that moment has passed:
    the scan must be redone so they get their partition."""
    if not manifest.exists():
        return False
    earliest = json.loads(manifest.read_text()).get("earliest_future")
    return earliest is not None and datetime.now(UTC) >= datetime.fromisoformat(earliest)


def _drop_other_scans(current: Path) -> None:
    for other in current.parent.iterdir():
        if other != current:
            shutil.rmtree(other, ignore_errors=True)


def _chunk_frame(
    chunk: list[Record | MalformedLine],
    header: list[str],
    layout: Layout,
    path: Path,
    base: int,
    rejects: list[dict[str, object]],
) -> pd.DataFrame:
    """Raw records → a frame with the contract's field names; malformed lines → rejects."""
    records = [item for item in chunk if isinstance(item, Record)]
    for item in chunk:
        if isinstance(item, MalformedLine):
            rejects.append(
                {
                    "source_row_id": base + item.line_number,
                    "source_file": str(path),
                    "line_number": item.line_number,
                    "raw_text": item.raw_text,
                    "raw_row": None,
                    "reasons": [f"malformed line: {item.reason}"],
                }
            )
    if not records:
        return pd.DataFrame()
    columns = list(zip(*(r.fields for r in records), strict=True))
    raw = pd.DataFrame(
        {
            name: pd.array(values, dtype="string")
            for name, values in zip(header, columns, strict=True)
        }
    )
    frame = pd.DataFrame(
        {
            "source_row_id": pd.array([base + r.line_number for r in records], dtype="int64"),
            "source_file": str(path),
            "line_number": pd.array([r.line_number for r in records], dtype="int64"),
        }
    )
    for name in SOURCE_FIELDS:
        column = layout.column_for(name)
        frame[name] = raw[column].to_numpy() if column else pd.NA
        frame[name] = frame[name].astype("string")
    extras = layout.extra_columns
    if extras:
        frame["extra_columns"] = pd.array(
            [
                json.dumps(dict(zip(extras, vals, strict=True)))
                for vals in zip(*(raw[c] for c in extras), strict=True)
            ],
            dtype="string",
        )
    else:
        frame["extra_columns"] = pd.array([pd.NA] * len(frame), dtype="string")
    return frame


def _place(
    frame: pd.DataFrame,
    source_timezone: str,
    first_day: pd.Timestamp,
    run_start: pd.Timestamp,
    rejects: list[dict[str, object]],
    future: list[pd.Timestamp],
) -> pd.DataFrame:
    """Parse timestamps and give each row its UTC day; rows with no partition become rejects.
    The earliest timestamp rejected as later than the run's start goes to `future`."""
    parsed, reasons = parse_utc(frame["timestampUtc"], source_timezone)
    reasons = reasons.copy()
    too_late = parsed.notna() & (parsed > run_start)
    if too_late.any():
        future.append(parsed[too_late].min())
    reasons[too_late] = LATER_THAN_RUN_START
    reasons[parsed.notna() & (parsed < first_day)] = BEFORE_START_DATE
    bad = reasons.notna()
    # Any: the cells as the frame holds them, not the scalars pandas-stubs types a row's as.
    rows: Iterator[Any] = frame.loc[bad].assign(reason=reasons[bad]).itertuples(index=False)
    for row in rows:
        raw_row = raw_fields({name: _none(getattr(row, name)) for name in SOURCE_FIELDS})
        rejects.append(
            {
                "source_row_id": int(row.source_row_id),
                "source_file": row.source_file,
                "line_number": int(row.line_number),
                "raw_text": None,
                "raw_row": json.dumps(raw_row),
                "reasons": [row.reason],
            }
        )
    kept = frame.loc[~bad].copy()
    kept["timestamp_utc"] = parsed[~bad]
    kept["partition_key"] = utc_days(kept["timestamp_utc"])
    return kept


def utc_days(timestamps: pd.Series) -> np.ndarray:
    """Each UTC timestamp's day as YYYY-MM-DD. Formats each distinct day once: strftime per row
    is slow (docs/performance.md, 'Why the code is shaped this way')."""
    days = timestamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    distinct, position = np.unique(days, return_inverse=True)
    return np.datetime_as_string(distinct, unit="D").astype(object)[position]


def _none(value: object) -> object:
    return None if value is pd.NA or value is None else value
