"""Transform and validate work partitions in groups (one call per ~GROUP_ROWS rows); every
partition's outputs must still be exactly what processing it alone gives."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger_backfill_dagster.defs.backfill import transform as transform_asset
from ledger_backfill_dagster.defs.backfill import validate as validate_asset
from ledger_backfill_dagster.defs.backfill.extract import extracted_source
from ledger_backfill_dagster.defs.backfill.transform import transformed_entries
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.entries.contract import ARROW_STRING
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.entries.validation import split
from ledger_backfill_dagster.ledger.accounts import account_currencies
from ledger_backfill_dagster.ledger.rejects import (
    raw_frame,
    raw_rows,
    replace_partition_rejects,
    replace_rejects,
)
from ledger_backfill_dagster.ledger.reports import write_error_report
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings
from ledger_backfill_dagster.resources.stage_store import (
    StageStore,
    frame_table,
    partition_groups,
    partition_tables,
)
from ledger_backfill_dagster.sources.base import STAGED_SCHEMA
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import materialize_range, use_source_files

DAYS = [f"2024-01-0{d}" for d in range(1, 9)]
STAGES = [extracted_source, transformed_entries, validated_entries]
GROUP_LIMIT = 500  # ~150 rows a day: groups of several days, and day 5 (~750 rows) alone
EMPTY_DAY = "2024-01-03"
BIG_DAY = "2024-01-05"
FIXED_DAY = "2024-01-02"  # its bad rows are corrected before the second run
NEWLY_BAD_DAY = "2024-01-06"  # clean in the first run, one bad row in the second


def _breakages(day: str, first_run: bool) -> dict[int, dict[str, str]]:
    """Row index within the day → fields to overwrite."""
    bad = {
        0: {"amount": "12.3.4"},
        3: {"referenceId": ""},  # valid, with a generated reference id
        5: {"debitAccountId": "NOPE", "metadata": "{bad"},
        8: {"metadata": "[1]", "referenceId": "  "},
        13: {"fxRate": "0", "currencyCode": "usd "},
    }
    if day in ("2024-01-01", "2024-01-04", BIG_DAY, "2024-01-07"):
        return bad
    if day == FIXED_DAY:
        return bad if first_run else {3: bad[3]}
    if day == NEWLY_BAD_DAY and not first_run:
        return {7: {"amount": "-1"}}
    return {}


def _write_source(base: Path, target: Path, first_run: bool) -> None:
    with base.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    by_day: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_day.setdefault(row["timestampUtc"][:10], []).append(row)
    out: list[dict[str, str]] = []
    for day, day_rows in by_day.items():
        if day == EMPTY_DAY:
            continue
        if day == BIG_DAY:  # more rows than a group holds: a group of its own
            day_rows = day_rows + [
                {**row, "referenceId": f"{row['referenceId']}-X{n}"}
                for n in range(4)
                for row in day_rows
            ]
        changes = _breakages(day, first_run)
        for i, row in enumerate(day_rows):
            out.append({**row, **changes.get(i, {})})
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(out)


@pytest.fixture
def grouped(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    data = generate(tmp_path / "data", entries=1200, days=8, accounts=20, start=date(2024, 1, 1))
    source = tmp_path / "data" / "source.csv"
    _write_source(data.entries_file, source, first_run=True)
    use_source_files(monkeypatch, source, data.accounts_file, REPORTS_DIR=str(tmp_path / "reports"))
    monkeypatch.setattr(transform_asset, "GROUP_ROWS", GROUP_LIMIT)
    monkeypatch.setattr(validate_asset, "GROUP_ROWS", GROUP_LIMIT)
    return data.entries_file, source


def _old_read_extracted(store: StageStore, source_key: str, key: str) -> pd.DataFrame:
    """`StageStore.read_extracted` as it was: pandas conversion, then a stable pandas sort."""
    location = json.loads(store.path(source_key, "extracted", key, ".json").read_text())["path"]

    def types(arrow_type: pa.DataType) -> object:
        if pa.types.is_string(arrow_type):
            return pd.StringDtype()
        return pd.Int64Dtype() if pa.types.is_int64(arrow_type) else None

    if location is None:
        table = STAGED_SCHEMA.empty_table()
    else:
        table = pq.read_table(location, schema=STAGED_SCHEMA)
    frame = table.to_pandas(types_mapper=types)
    return frame.sort_values("source_row_id", kind="stable").reset_index(drop=True)


def _assert_same_file(path: Path, expected: pd.DataFrame, scratch: Path) -> None:
    """The stage file holds what `expected.to_parquet(index=False)` would: same Arrow schema and
    pandas metadata, and the same frame read back by `pd.read_parquet`."""
    expected.to_parquet(scratch, index=False)
    assert pq.read_schema(path).equals(pq.read_schema(scratch), check_metadata=True), path
    actual, wanted = pd.read_parquet(path), pd.read_parquet(scratch)
    pd.testing.assert_frame_equal(actual, wanted, check_exact=True)


def _stored_rejects(database_url: str, source_id: str) -> dict[str, list[tuple]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT partition_key, source_row_id, source_file, line_number, raw_text, raw_row,"
            " reasons FROM ledger_backfill_rejects WHERE source_id = %s AND stage = 'validate'"
            " ORDER BY source_row_id",
            (source_id,),
        ).fetchall()
    stored: dict[str, list[tuple]] = {}
    for key, *row in rows:
        stored.setdefault(key, []).append(tuple(row))
    return stored


def _assert_one_by_one(database_url: str, result, tmp_path: Path, label: str) -> int:
    """Every partition's transformed and validated frames, stored rejects and error report are
    what the pre-grouping code made, partition by partition. Returns the rejects seen."""
    reports = MonitoringSettings.from_env().reports_path
    source = SourceSettings.from_env().reader()
    store = StageStore.default()
    sk = source.source_key
    with psycopg.connect(database_url) as conn:
        rules = TransformRules(account_currencies=account_currencies(conn))
    scratch = tmp_path / f"scratch-{label}.parquet"
    reference_reports = tmp_path / f"reference-reports-{label}"
    stored = _stored_rejects(database_url, source.source_id)
    by_partition, generated, rejected = [], 0, 0
    for key in DAYS:
        staged = _old_read_extracted(store, sk, key)
        expected = transform(staged, rules)
        generated += int(expected["reference_generated"].sum())
        _assert_same_file(store.path(sk, "transformed", key), expected, scratch)

        transformed = pq.read_table(store.path(sk, "transformed", key)).to_pandas(
            types_mapper=lambda t: ARROW_STRING if pa.types.is_string(t) else None
        )
        valid, rejects = split(transformed)
        _assert_same_file(store.path(sk, "validated", key), valid, scratch)
        if len(rejects):
            rejects = raw_rows(staged, rejects["source_row_id"]).merge(rejects, on="source_row_id")
            rejects["raw_text"] = None
        expected_rows = [
            (
                int(r.source_row_id),
                r.source_file,
                int(r.line_number),
                None,
                json.loads(r.raw_row),
                list(r.reasons),
            )
            for r in rejects.itertuples(index=False)
        ]
        assert stored.get(key, []) == expected_rows, key

        report = reports / sk / "errors" / f"{key}.csv"
        wanted = write_error_report(reference_reports, sk, key, rejects)
        if wanted is None:
            assert not report.exists(), key
        else:
            assert report.read_bytes() == wanted.read_bytes(), key
        by_partition.append(
            {"partition": key, "valid": str(len(valid)), "rejected": str(len(rejects))}
        )
        rejected += len(rejects)

    transformed_meta = result.asset_materializations_for_node("transformed_entries")[0].metadata
    assert transformed_meta["generated_reference_ids"].value == generated
    assert transformed_meta["partitions"].value == len(DAYS)
    validated = result.asset_materializations_for_node("validated_entries")
    # Each partition's event carries its own counts; the run's table is on every one of them.
    assert {m.partition: m.metadata["rejected"].value for m in validated} == {
        row["partition"]: int(row["rejected"]) for row in by_partition
    }
    assert sum(m.metadata["rejected"].value for m in validated) == rejected
    assert [r.data for r in validated[0].metadata["by_partition"].value.records] == by_partition
    return rejected


def test_grouped_stages_match_one_partition_at_a_time(
    grouped, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, source = grouped
    calls = {"transform": 0, "split": 0}

    def counted(name: str, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(transform_asset, "transform", counted("transform", transform))
    monkeypatch.setattr(validate_asset, "split", counted("split", split))
    first = materialize_range(DAYS[0], DAYS[-1], assets=STAGES)
    assert first.success
    # Days 1–4 (day 3 empty), day 5 alone (over the limit), days 6–8.
    assert calls == {"transform": 3, "split": 3}
    assert _assert_one_by_one(database_url, first, tmp_path, "first") > 10
    source_id = SourceSettings.from_env().reader().source_id
    stored = _stored_rejects(database_url, source_id)
    assert FIXED_DAY in stored and NEWLY_BAD_DAY not in stored
    errors = (
        MonitoringSettings.from_env().reports_path
        / SourceSettings.from_env().reader().source_key
        / "errors"
    )
    assert (errors / f"{FIXED_DAY}.csv").exists()

    # The source is corrected for one day and broken for another: a re-run leaves no stale
    # reject or report behind for the first, and quarantines the new one.
    _write_source(base, source, first_run=False)
    second = materialize_range(DAYS[0], DAYS[-1], assets=STAGES)
    assert second.success
    _assert_one_by_one(database_url, second, tmp_path, "second")
    stored = _stored_rejects(database_url, source_id)
    assert FIXED_DAY not in stored and NEWLY_BAD_DAY in stored
    assert not (errors / f"{FIXED_DAY}.csv").exists()
    assert (errors / f"{NEWLY_BAD_DAY}.csv").exists()


def test_partition_groups_fill_up_to_the_limit_in_order() -> None:
    sizes = {"a": 3, "b": 4, "c": 0, "d": 2, "e": 12, "f": 1, "g": 5}
    tables = {k: pa.table({"x": list(range(n))}) for k, n in sizes.items()}
    groups = [[k for k, _ in g] for g in partition_groups(sizes, tables.__getitem__, 9)]
    assert groups == [["a", "b", "c", "d"], ["e"], ["f", "g"]]


def test_partition_tables_equal_converting_each_partition_alone() -> None:
    """Slices of one conversion, except where Arrow would infer another type for a slice alone
    (an object column with nothing in it), are what converting each part alone gives."""
    frame = pd.DataFrame(
        {
            "source_row_id": pd.array([1, 2, 3, 4, 5, 6], dtype="Int64"),
            # As transform makes it: pd.NA where the source had none.
            "source_file": pd.array(["a", pd.NA, None, "b", pd.NA, "c"], dtype=object),
            "text": pd.array(["x", "y", None, "z", "w", "v"], dtype="string"),
            "flag": [True, False, True, False, True, False],
        }
    )
    sizes = [2, 1, 0, 1, 2]  # the second part's source_file is all missing, the third is empty
    start = 0
    for size, table in zip(sizes, partition_tables(frame, sizes), strict=True):
        alone = frame_table(frame.iloc[start : start + size])
        assert table.schema.equals(alone.schema, check_metadata=True)
        assert table.equals(alone)
        start += size
    assert pa.types.is_null(frame_table(frame.iloc[2:3]).schema.field("source_file").type)


def _reject(row_id: int, reason: str) -> dict[str, object]:
    return {
        "source_row_id": row_id,
        "source_file": "f.csv",
        "line_number": row_id + 1,
        "raw_text": None,
        "raw_row": json.dumps({"amount": "x"}),
        "reasons": [reason],
    }


def test_replace_partition_rejects_replaces_exactly_the_given_partitions(conn) -> None:
    def stored() -> dict[str | None, list[tuple]]:
        rows = conn.execute(
            "SELECT partition_key, source_row_id, stage, reasons FROM ledger_backfill_rejects"
            " ORDER BY source_row_id"
        ).fetchall()
        out: dict[str | None, list[tuple]] = {}
        for key, *row in rows:
            out.setdefault(key, []).append(tuple(row))
        return out

    common = {"source_id": "s", "source_type": "CSV", "run_id": "r"}
    replace_rejects(
        conn,
        **common,
        partition_key=None,
        stage="extract",
        rejects=pd.DataFrame([_reject(1, "no timestamp")]),
    )
    replace_partition_rejects(
        conn,
        **common,
        stage="validate",
        rejects={
            "2024-01-01": pd.DataFrame([_reject(10, "a"), _reject(11, "b")]),
            "2024-01-02": pd.DataFrame([_reject(20, "c")]),
            "2024-01-03": pd.DataFrame([_reject(30, "d")]),
        },
    )
    replace_partition_rejects(
        conn,
        **common,
        stage="validate",
        rejects={
            "2024-01-01": pd.DataFrame(columns=["source_row_id", "reasons"]),  # now clean
            "2024-01-02": pd.DataFrame([_reject(21, "e")]),
        },
    )
    assert stored() == {
        None: [(1, "extract", ["no timestamp"])],
        "2024-01-02": [(21, "validate", ["e"])],
        "2024-01-03": [(30, "validate", ["d"])],  # not given: left as it was
    }


@pytest.mark.parametrize(
    ("raw_ids", "reject_ids"),
    [([3, 5, 9], [3, 5, 9]), ([3, 5, 9], [3, 9]), ([3, 5, 5], [5]), ([], [])],
)
def test_rejects_join_their_raw_rows_as_a_merge_does(
    raw_ids: list[int], reject_ids: list[int]
) -> None:
    line_numbers = pd.array([n + 1 if n != 5 else None for n in raw_ids], dtype="Int64")
    staged = pd.DataFrame(
        {
            "source_row_id": pd.array(raw_ids, dtype="Int64"),
            "source_file": pd.array(["f.csv"] * len(raw_ids), dtype="string"),
            "line_number": line_numbers,
        }
    )
    raw = raw_frame(staged, [json.dumps({"n": n}) for n in raw_ids])
    rejects = pd.DataFrame(
        {
            "source_row_id": np.array(reject_ids, dtype="int64"),
            "reasons": [[f"rule {n}"] for n in reject_ids],
        }
    )
    expected = raw.merge(rejects, on="source_row_id")
    expected["raw_text"] = None
    pd.testing.assert_frame_equal(validate_asset._joined(raw, rejects), expected)


def test_contract_error_in_a_group_names_its_partition(
    grouped, database_url: str, tmp_path: Path
) -> None:
    """A frame the contract refuses (a pipeline defect) fails the run naming its partition, as
    when partitions were validated one at a time; the partitions before it are validated."""
    assert materialize_range(DAYS[0], DAYS[-1], assets=STAGES).success
    store = StageStore.default()
    sk = SourceSettings.from_env().reader().source_key
    broken = store.path(sk, "transformed", "2024-01-02")
    frame = pd.read_parquet(broken).drop(columns=["amount"])
    frame.to_parquet(broken, index=False)
    for key in DAYS:
        store.path(sk, "validated", key).unlink()

    result = materialize_range(DAYS[0], DAYS[-1], assets=[validated_entries], raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.event_specific_data.error.message
    assert "2024-01-02: transformed frame lacks the contract's columns ['amount']" in description
    assert store.path(sk, "validated", "2024-01-01").exists()
    assert not store.path(sk, "validated", "2024-01-02").exists()


def test_groups_concatenate_only_frames_split_would_judge_alike() -> None:
    def table(**types: pa.DataType) -> pa.Table:
        return pa.table({name: pa.array([None], type=t) for name, t in types.items()})

    text, empty = pa.string(), pa.null()
    concatenated = validate_asset._concatenated
    # source_file is read by nothing downstream: all-missing in one partition is fine.
    joined = concatenated(
        [table(amount=text, source_file=empty), table(amount=text, source_file=text)]
    )
    assert joined is not None and joined.schema.field("source_file").type == text
    assert concatenated([table(amount=text), table(amount=empty)]) is None
    assert concatenated([table(amount=text), table(amount=text, source_file=text)]) is None
    assert (
        concatenated(
            [table(amount=text, line_number=pa.int64()), table(amount=text, line_number=empty)]
        )
        is None
    )
