"""The Source Reader seam (the seed's first component) and what every reader hands on.

A reader stages the rows of the partitions it is asked for as Parquet, one file per partition,
with the columns below, and reports the rows it could not place (no readable timestamp, an
unreadable line). `extracted_source` calls it; the later stages only ever read the staged files.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS

# The staged frame: source position, the contract's fields as raw text, the parsed UTC timestamp.
STAGED_SCHEMA = pa.schema(
    [
        ("source_row_id", pa.int64()),
        ("source_file", pa.string()),
        ("line_number", pa.int64()),
        *[(name, pa.string()) for name in SOURCE_FIELDS],
        ("extra_columns", pa.string()),
        ("timestamp_utc", pa.timestamp("us", tz="UTC")),
    ]
)

REJECT_COLUMNS = [
    "source_row_id",
    "source_file",
    "line_number",
    "raw_text",
    "raw_row",
    "reasons",
]


@dataclass
class ExtractResult:
    """What one extraction staged: rows per partition, and rows that belong to no partition."""

    source_id: str
    source_type: str
    staged: dict[str, Path]
    rows_by_partition: dict[str, int]
    unpartitioned_rejects: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS)
    )
    rows_read: int = 0
    details: dict[str, object] = field(default_factory=dict)


class SourceReader(ABC):
    """Reads one source into staged per-partition Parquet."""

    source_type: str

    @property
    @abstractmethod
    def source_id(self) -> str: ...

    @property
    def source_key(self) -> str:
        """A short, filesystem-safe name for this source's staging folder."""
        digest = hashlib.sha1(f"{self.source_type}\0{self.source_id}".encode()).hexdigest()
        return digest[:16]

    @abstractmethod
    def extract(self, partition_keys: list[str], staging_root: Path) -> ExtractResult:
        """Stage the rows of `partition_keys`; cost should not grow with partitions × rows."""
