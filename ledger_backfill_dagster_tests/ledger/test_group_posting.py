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


def _group_of_days(tmp_path, backfill_env, monkeypatch, **settings: str):
    from ledger_backfill_dagster_tests.support.helpers import (
        use_source_files,
        write_deposit_dataset,
    )

    entries, accounts = write_deposit_dataset(tmp_path / "data", days=6, per_day=4)
    use_source_files(monkeypatch, entries, accounts, BATCH_SIZE="100", **settings)
    return entries, accounts


def _statuses(conn) -> dict[str, tuple[str, str | None]]:
    rows = conn.execute(
        "SELECT partition_key, status, error_message FROM ledger_backfill_checkpoints"
    ).fetchall()
    return {key: (status, message) for key, status, message in rows}


def test_drift_found_after_a_groups_batch_fails_its_days_not_completes_them(
    tmp_path, backfill_env, monkeypatch, conn
) -> None:
    """The group's batch commits, then its balance check finds an account moved behind the
    ledger's back: its days end FAILED naming the drift, as a single day's would, never
    COMPLETED by a second pass over them."""
    from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
    from ledger_backfill_dagster_tests.support.helpers import failure_text, materialize_range

    _, accounts = _group_of_days(tmp_path, backfill_env, monkeypatch)
    monkeypatch.setenv("LOAD_MODE", "live")  # an initial load checks balances once, after it
    load_accounts(conn, read_accounts_file(str(accounts)))
    conn.execute("UPDATE bank_accounts SET balance = balance + 0.01 WHERE id = 'FEE-USD'")
    result = materialize_range("2024-01-01", "2024-01-06", raise_on_error=False)
    assert not result.success
    assert "entries sum to" in failure_text(result)
    statuses = _statuses(conn)
    assert len(statuses) == 6
    assert {status for status, _ in statuses.values()} == {"FAILED"}, statuses
    assert all("BalanceDriftError" in (message or "") for _, message in statuses.values())


def test_a_day_failing_after_its_group_fell_back_leaves_no_day_in_progress(
    tmp_path, backfill_env, monkeypatch, conn
) -> None:
    """SKIP_DUPLICATES=false and a repeat in every day: the group cannot post, its days go one by
    one, the first fails; the days the group opened but the run never reached end PAUSED (not
    IN_PROGRESS with nobody posting them), and nothing is in the ledger."""
    from ledger_backfill_dagster_tests.support.helpers import materialize_range

    _group_of_days(tmp_path, backfill_env, monkeypatch, SKIP_DUPLICATES="false")
    result = materialize_range("2024-01-01", "2024-01-06", raise_on_error=False)
    assert not result.success
    statuses = _statuses(conn)
    assert statuses["2024-01-01"][0] == "FAILED"
    later = {key: value for key, value in statuses.items() if key != "2024-01-01"}
    assert later and {status for status, _ in later.values()} == {"PAUSED"}, statuses
    assert all("not posted" in (message or "") for _, message in later.values())
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0
