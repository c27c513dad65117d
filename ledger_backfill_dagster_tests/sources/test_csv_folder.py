"""A CSV source may be a folder or a glob of files: read in a stable order (sorted by path),
whatever order the files were written or listed in, so source_row_ids never move between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from ledger_backfill_dagster.sources.csv_source import ROW_ID_FILE_STRIDE, CsvSource, resolve_files

HEADER = "debitAccountId,creditAccountId,amount,currencyCode,referenceId,timestampUtc\n"


def write_folder(folder: Path) -> None:
    folder.mkdir()
    # Written out of order, with distinct modification times, plus files that are not sources.
    for name, day in (("c_march.csv", "03"), ("a_january.csv", "01"), ("b_february.csv", "02")):
        rows = "".join(
            f"A,B,{n}.00,USD,{name[0]}-{n},2024-01-{day}T0{n}:00:00Z\n" for n in range(1, 4)
        )
        (folder / name).write_text(HEADER + rows)
        os.utime(folder / name, (1_700_000_000 - ord(name[0]), 1_700_000_000 - ord(name[0])))
    (folder / "notes.txt").write_text("not a source\n")
    (folder / "nested").mkdir()
    (folder / "nested" / "ignored.csv").write_text(HEADER)


def staged_ids(source: CsvSource, staging: Path) -> dict[str, list[tuple[int, str]]]:
    result = source.extract(["2024-01-01", "2024-01-02", "2024-01-03"], staging)
    out = {}
    for key, location in sorted(result.staged.items()):
        table = pq.read_table(location, columns=["source_row_id", "referenceId"])
        out[key] = sorted(zip(*(c.to_pylist() for c in table.columns), strict=True))
    return out


def test_folder_and_glob_are_read_in_sorted_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    write_folder(folder)
    names = [p.name for p in resolve_files(str(folder))]
    assert names == ["a_january.csv", "b_february.csv", "c_march.csv"]
    assert [p.name for p in resolve_files(str(folder / "*.csv"))] == names

    source = CsvSource(spec=str(folder), start_date="2024-01-01")
    first = staged_ids(source, tmp_path / "stage1")
    # File index (in sorted order) × stride + line number: a.csv is file 0, c.csv file 2.
    assert first["2024-01-01"] == [(n + 1, f"a-{n}") for n in range(1, 4)]
    assert first["2024-01-03"] == [(2 * ROW_ID_FILE_STRIDE + n + 1, f"c-{n}") for n in range(1, 4)]

    # Listing order and modification times do not matter: a fresh read gives the same ids.
    for path in folder.glob("*.csv"):
        os.utime(path, None)
    again = staged_ids(
        CsvSource(spec=str(folder / "*.csv"), start_date="2024-01-01"), tmp_path / "s2"
    )
    assert again == first
