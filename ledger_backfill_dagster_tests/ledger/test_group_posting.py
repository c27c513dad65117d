"""Group posting's pure parts: a group's plan digests are each day's own, and how days are
grouped into posting units. The posting itself is exercised end to end (e2e/test_long_history.py,
e2e/test_group_faults.py) and by every CLI test with small days."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.defs.backfill.post import posting_units
from ledger_backfill_dagster.ledger.group_posting import GROUP_MAX_PARTITIONS
from ledger_backfill_dagster.ledger.posting import _csv_bytes, plan_digests
from ledger_backfill_dagster.resources.stage_store import arrow_text


def _frame(rows: int, offset: int) -> pd.DataFrame:
    table = pa.table(
        {
            "source_row_id": pa.array(range(offset, offset + rows), pa.int64()),
            "reference_id": pa.array([f"R{offset + i}" for i in range(rows)], pa.string()),
            "amount": pa.array([f"{i}.05" for i in range(rows)], pa.string()),
            "timestamp_utc": pa.array(
                [pd.Timestamp("2024-01-01", tz="UTC")] * rows, pa.timestamp("us", tz="UTC")
            ),
            "metadata": pa.array([None if i % 2 else '{"a": 1}' for i in range(rows)], pa.string()),
        }
    )
    return table.to_pandas(types_mapper=arrow_text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=12))
def test_a_groups_digests_are_each_days_own(sizes: list[int]) -> None:
    frames, offset = [], 0
    for size in sizes:
        frames.append(_frame(size, offset))
        offset += size
    alone = [plan_digests([frame])[0] for frame in frames]
    assert plan_digests(frames) == alone
    whole = pd.concat(frames, ignore_index=True)
    cut, start = [], 0
    for size in sizes:
        cut.append(whole.iloc[start : start + size].reset_index(drop=True))
        start += size
    assert plan_digests(cut, whole) == alone


def test_posting_units_fill_a_batch_keep_order_and_put_big_days_alone() -> None:
    rows = {"d1": 3, "d2": 0, "d3": 4, "d4": 12, "d5": 1, "d6": 2}
    units = posting_units(list(rows), rows, batch_size=8)
    assert units == [["d1", "d2", "d3"], ["d4"], ["d5", "d6"]]
    many = {f"k{i:04d}": 0 for i in range(GROUP_MAX_PARTITIONS + 5)}
    assert [len(u) for u in posting_units(list(many), many, batch_size=1000)] == [
        GROUP_MAX_PARTITIONS,
        5,
    ]


def test_the_staged_csv_has_one_line_per_row_whatever_the_chunks() -> None:
    """pyarrow's CSV writer (23.0) repeats rows of a table whose column holds an empty chunk
    beside differently chunked ones (a group read from many days' files, empty days included)."""
    chunked = pa.chunked_array([pa.array(["a", "b"]), pa.array([], pa.string()), pa.array(["c"])])
    table = pa.table({"partition_key": pa.array(["k1", "k1", "k2"]), "reference_id": chunked})
    assert _csv_bytes(table) == b'"k1","a"\n"k1","b"\n"k2","c"\n'
