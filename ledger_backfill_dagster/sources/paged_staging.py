"""Per-partition staging for sources read page by page (DATABASE, API, SCB).

A partition is read into a work folder, one Parquet file per page, and a small state file records
after every page how far the read got (the last source id, the next cursor or page number). Memory
holds one page at a time, however large the day. When the last page is in, the work folder
replaces the partition's staged folder in one rename, so later stages never see half a day.

A read that is interrupted (a crash, a malformed page, a source that stayed down) resumes where
its state file says on the next run; pages already staged are not fetched again. A partition whose
read completed is read afresh on the next run, so late rows are picked up (the database reader
first asks whether the day's row count and highest id changed, and keeps the staged day if not),
and its posting checkpoint then skips it if nothing changed.

Files the dataset reader must ignore start with "_" or "." (pyarrow's default ignore prefixes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS
from ledger_backfill_dagster.lib.http_client import dump_json
from ledger_backfill_dagster.sources.base import STAGED_SCHEMA

STATE_FILE = "_state.json"
STAGED_LAYOUT_VERSION = hashlib.sha256("\0".join(STAGED_SCHEMA.names).encode()).hexdigest()[:8]


def staged_table(rows: Iterable[dict[str, object]]) -> pa.Table:
    """Rows with the STAGED_SCHEMA's keys (canonical fields as text or None) → an Arrow table."""
    rows = list(rows)
    columns = {name: [row.get(name) for row in rows] for name in STAGED_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=STAGED_SCHEMA)


def text(value: object) -> str | None:
    """A canonical field's value as text (None stays None)."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def canonical_row(
    source_row_id: int,
    source_file: str,
    line_number: int,
    fields: dict[str, str | None],
    extras: dict[str, object] | None,
    timestamp_utc: datetime | None,
) -> dict[str, object]:
    row: dict[str, object] = {
        "source_row_id": source_row_id,
        "source_file": source_file,
        "line_number": line_number,
        "extra_columns": dump_json(extras) if extras else None,
        "timestamp_utc": timestamp_utc,
    }
    for name in SOURCE_FIELDS:
        row[name] = fields.get(name)
    return row


@dataclass
class PartitionStaging:
    """The staging of one partition of one source (see the module docstring)."""

    final_dir: Path
    work_dir: Path
    fingerprint: str
    state: dict[str, Any] = field(default_factory=dict)  # the state file's JSON

    @property
    def resume(self) -> object | None:
        """What the reader needs to continue: last id, next cursor or next page; None = start."""
        return self.state.get("resume")

    @property
    def rows(self) -> int:
        return int(self.state.get("rows", 0))

    @property
    def pages(self) -> int:
        return int(self.state.get("pages", 0))

    @property
    def resumed(self) -> bool:
        return bool(self.state.get("resumed_from_page"))

    def staged_ids(self) -> set[int]:
        """source_row_ids already staged in the work folder (to spot repeats across pages)."""
        files = sorted(self.work_dir.glob("part-*.parquet"))
        if not files:
            return set()
        ids = pq.read_table(files, columns=["source_row_id"]).column(0).to_pylist()
        return set(ids)

    def write_page(self, table: pa.Table, resume: object) -> None:
        """Stage one page durably, then record that it is staged and where to go on."""
        number = self.pages + 1
        if table.num_rows:
            part = self.work_dir / f"part-{number:06d}.parquet"
            tmp = self.work_dir / f".part-{number:06d}.tmp{os.getpid()}"
            pq.write_table(table, tmp)
            tmp.replace(part)
        self.state.update(
            pages=number, rows=self.rows + table.num_rows, resume=_jsonable(resume), complete=False
        )
        self._save_state()

    def finish(self) -> Path | None:
        """Swap the completed read in as the partition's staged folder; None if it has no rows."""
        self.state["complete"] = True
        self._save_state()
        _swap_in(self.work_dir, self.final_dir)
        return self.final_dir if self.rows else None

    def _save_state(self) -> None:
        tmp = self.work_dir / f".state.tmp{os.getpid()}"
        tmp.write_text(json.dumps(self.state, indent=1, default=str))
        tmp.replace(self.work_dir / STATE_FILE)


def _jsonable(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _swap_in(work: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    work.rename(final)
    shutil.rmtree(old, ignore_errors=True)


class SourceStaging:
    """All partitions of one source under <staging_root>/<source_key>/paged/."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = root / "paged"
        # A staged file of another layout (a field added) is read afresh, never read as this one.
        self.fingerprint = f"{fingerprint}:{STAGED_LAYOUT_VERSION}"
        (self.root / "work").mkdir(parents=True, exist_ok=True)

    def lock(self, partition_key: str) -> FileLock:
        """Two runs never read the same partition of the same source into the same folder."""
        return FileLock(str(self.root / "work" / f"{partition_key}.lock"))

    def final_dir(self, partition_key: str) -> Path:
        return self.root / f"partition_key={partition_key}"

    def completed(self, partition_key: str) -> dict | None:
        """The state of this partition's last completed read, if made with these settings."""
        state = _read_state(self.final_dir(partition_key))
        if state and state.get("complete") and state.get("fingerprint") == self.fingerprint:
            return state
        return None

    def open(self, partition_key: str, started_at: datetime) -> PartitionStaging:
        """Resume an interrupted read of this partition, or start a fresh one.

        Call with `lock(partition_key)` held."""
        work = self.root / "work" / partition_key
        final = self.final_dir(partition_key)
        state = _read_state(work)
        if state and state.get("fingerprint") == self.fingerprint:
            if state.get("complete"):  # crashed between finishing and the swap: finish it
                _swap_in(work, final)
            else:
                state["resumed_from_page"] = int(state.get("pages", 0)) + 1
                return PartitionStaging(final, work, self.fingerprint, state)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        staging = PartitionStaging(
            final,
            work,
            self.fingerprint,
            {
                "fingerprint": self.fingerprint,
                "partition_key": partition_key,
                "started_at": started_at.isoformat(),
                "pages": 0,
                "rows": 0,
                "resume": None,
                "complete": False,
            },
        )
        staging._save_state()
        return staging


def _read_state(work: Path) -> dict | None:
    path = work / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
