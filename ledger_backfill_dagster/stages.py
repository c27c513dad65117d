"""Where each stage keeps its per-partition frames: Parquet files under the state folder.

Layout: <LEDGER_BACKFILL_HOME>/stages/<source_key>/<stage>/<partition>.parquet. The extract stage
stores a pointer instead (its reader has already staged the rows as Parquet). Writes go to a
temporary name first and are renamed into place, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ledger_backfill_dagster.settings import state_home
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
        target = self.path(source_key, stage, partition_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        frame.to_parquet(tmp, index=False)
        tmp.replace(target)
        return target

    def read_frame(self, source_key: str, stage: str, partition_key: str) -> pd.DataFrame:
        target = self.path(source_key, stage, partition_key)
        if not target.exists():
            raise FileNotFoundError(
                f"no {stage} data for partition {partition_key}: materialize the upstream asset first"
            )
        return pd.read_parquet(target)

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

    def read_extracted(self, source_key: str, partition_key: str) -> pd.DataFrame:
        pointer = self.path(source_key, "extracted", partition_key, ".json")
        if not pointer.exists():
            raise FileNotFoundError(
                f"partition {partition_key} was not extracted: materialize extracted_source first"
            )
        location = json.loads(pointer.read_text())["path"]
        if location is None:
            return STAGED_SCHEMA.empty_table().to_pandas(types_mapper=_arrow_types)
        table = pq.read_table(location, schema=STAGED_SCHEMA)
        frame = table.to_pandas(types_mapper=_arrow_types)
        return frame.sort_values("source_row_id", kind="stable").reset_index(drop=True)


def _arrow_types(arrow_type: pa.DataType) -> object:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    if pa.types.is_int64(arrow_type):
        return pd.Int64Dtype()
    return None
