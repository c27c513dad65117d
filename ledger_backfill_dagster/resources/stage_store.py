"""Where each stage keeps its per-partition frames: Parquet files under the state folder.

Layout: <LEDGER_BACKFILL_HOME>/stages/<source_key>/<stage>/<partition>.parquet. The extract stage
stores a pointer instead (its reader has already staged the rows as Parquet). Writes go to a
temporary name first and are renamed into place, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ledger_backfill_dagster.lib.env import state_home
from ledger_backfill_dagster.sources.base import STAGED_SCHEMA


@dataclass(frozen=True)
class StageStore:
    root: Path

    @classmethod
    def default(cls) -> StageStore:
        return cls(state_home() / "stages")

    def path(
        self, source_key: str, stage: str, partition_key: str, suffix: str = ".parquet"
    ) -> Path:
        return self.root / source_key / stage / f"{partition_key}{suffix}"

    def write_frame(
        self, source_key: str, stage: str, partition_key: str, frame: pd.DataFrame
    ) -> Path:
        """The frame as `frame.to_parquet(index=False)` writes it (same schema, same pandas
        metadata, so `read_frame` gives back the same dtypes)."""
        return self.write_table(source_key, stage, partition_key, frame_table(frame))

    def write_table(self, source_key: str, stage: str, partition_key: str, table: pa.Table) -> Path:
        """Write an Arrow table (e.g. one partition's slice of a larger table made by
        `frame_table`) straight through pyarrow: pandas' `to_parquet` adds path and option
        handling per call, which a backfill of a thousand partitions pays per stage
        (docs/performance.md, 'Why the code is shaped this way')."""
        target = self.path(source_key, stage, partition_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(table, tmp)
        tmp.replace(target)
        return target

    def read_frame(self, source_key: str, stage: str, partition_key: str) -> pd.DataFrame:
        """The frame `write_frame` wrote, with its dtypes (what `pd.read_parquet` does, minus
        pandas' path handling)."""
        return self.read_table(source_key, stage, partition_key).to_pandas()

    def read_table(self, source_key: str, stage: str, partition_key: str) -> pa.Table:
        target = self.path(source_key, stage, partition_key)
        if not target.exists():
            raise FileNotFoundError(
                f"no {stage} data for partition {partition_key}: materialize the upstream asset first"
            )
        # A stage file is one Parquet file: read it as one, without the dataset layer.
        return pq.ParquetFile(target).read(use_pandas_metadata=True)

    def row_count(self, source_key: str, stage: str, partition_key: str) -> int:
        """Rows of a stage frame, from the Parquet footer (without reading the data)."""
        target = self.path(source_key, stage, partition_key)
        return pq.ParquetFile(target).metadata.num_rows if target.exists() else 0

    def write_pointer(
        self, source_key: str, partition_key: str, staged: Path | None, rows: int
    ) -> None:
        target = self.path(source_key, "extracted", partition_key, ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"path": str(staged) if staged else None, "rows": rows}))
        tmp.replace(target)

    def rows_read(self, source_key: str, keys: list[str]) -> dict[str, int]:
        """Rows the extract stage read per partition (0 for one it has not extracted)."""
        pointers = {key: self.path(source_key, "extracted", key, ".json") for key in keys}
        return {
            key: json.loads(pointer.read_text())["rows"] if pointer.exists() else 0
            for key, pointer in pointers.items()
        }

    def validated_paths(self, source_key: str, keys: list[str]) -> list[Path]:
        """The validated stage files of these partitions; fails naming the first one missing."""
        paths = [self.path(source_key, "validated", key) for key in keys]
        for key, path in zip(keys, paths, strict=True):
            if not path.exists():
                self.read_table(source_key, "validated", key)  # raises, naming what is missing
        return paths

    def read_extracted(self, source_key: str, partition_key: str) -> pd.DataFrame:
        return staged_frame(self.read_extracted_table(source_key, partition_key))

    def read_extracted_table(self, source_key: str, partition_key: str) -> pa.Table:
        """The staged rows of a partition in source_row_id order, as Arrow (`staged_frame` makes
        the frame `read_extracted` gives; tables of several partitions can be concatenated
        first, to convert them in one call)."""
        pointer = self.path(source_key, "extracted", partition_key, ".json")
        if not pointer.exists():
            raise FileNotFoundError(
                f"partition {partition_key} was not extracted: materialize extracted_source first"
            )
        location = json.loads(pointer.read_text())["path"]
        if location is None:
            return STAGED_SCHEMA.empty_table()
        table = _read_staged(Path(location))
        # Arrow's sort is stable, with nulls last, like pandas' stable sort_values.
        return table.sort_by("source_row_id")


def _read_staged(location: Path) -> pa.Table:
    """A partition's staged rows: the Parquet files of its folder (one per source chunk that had
    rows of the day), as `pq.read_table(location, schema=STAGED_SCHEMA)` reads them, without the
    dataset layer that call sets up each time (a long daily history has thousands of days)."""
    files = sorted(location.glob("*.parquet")) if location.is_dir() else [location]
    if not files:
        return pq.read_table(location, schema=STAGED_SCHEMA)
    tables = [pq.ParquetFile(f).read(columns=STAGED_SCHEMA.names) for f in files]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return table.select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)


def staged_frame(table: pa.Table) -> pd.DataFrame:
    """Staged rows as the transform stage reads them: nullable pandas strings and integers."""
    return table.to_pandas(types_mapper=_arrow_types)


def frame_table(frame: pd.DataFrame) -> pa.Table:
    """A frame as Arrow, the way `to_parquet(index=False)` converts it."""
    return pa.Table.from_pandas(frame, preserve_index=False)


def partition_groups(
    keys: Iterable[str], read: Callable[[str], pa.Table], max_rows: int
) -> Iterator[list[tuple[str, pa.Table]]]:
    """Consecutive partitions' tables, gathered until the next one would take the group past
    `max_rows` (a partition bigger than that is a group of its own). A stage then pays its
    per-call costs once per group instead of once per partition, holding at most one group and
    the next partition in memory."""
    group: list[tuple[str, pa.Table]] = []
    rows = 0
    for key in keys:
        table = read(key)
        if group and rows + table.num_rows > max_rows:
            yield group
            group, rows = [], 0
        group.append((key, table))
        rows += table.num_rows
    if group:
        yield group


def partition_tables(frame: pd.DataFrame, sizes: Sequence[int]) -> Iterator[pa.Table]:
    """Each run of `sizes[i]` consecutive rows of `frame`, as `frame_table` would convert those
    rows alone: the whole frame is converted once and sliced (no copy). Arrow infers the type
    of an object column from its values (all missing: the null type), so a slice whose values
    would give another type than the whole frame's is converted on its own."""
    try:
        whole: pa.Table | None = frame_table(frame)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        whole = None  # e.g. mixed types in an object column: every slice on its own
    # Only the object columns' values are looked at per slice, as NumPy views: slicing the
    # frame itself costs about a millisecond per call (every column), thousands of times over in
    # a long daily history.
    inferred = {c: frame[c].to_numpy() for c in frame.columns if frame[c].dtype == object}
    start = 0
    for size in sizes:
        stop = start + size
        if whole is None or any(
            pa.infer_type(values[start:stop], from_pandas=True) != whole.schema.field(c).type
            for c, values in inferred.items()
        ):
            yield frame_table(frame.iloc[start:stop])
        else:
            yield whole.slice(start, size)
        start = stop


def arrow_text(arrow_type: pa.DataType) -> object:
    """`to_pandas` type mapper: text as Arrow-backed strings, everything else as pandas does it.
    Faster to read than Python strings, and a fraction of their memory (docs/performance.md,
    'Why the code is shaped this way')."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype("pyarrow")
    return None


def _arrow_types(arrow_type: pa.DataType) -> object:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    if pa.types.is_int64(arrow_type):
        return pd.Int64Dtype()
    return None
