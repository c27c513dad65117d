r"""Quarantine: every rejected source row, with its position, raw content and reasons.

PostgreSQL can store neither a NUL character in TEXT nor `\u0000` in JSONB, and a row that was
rejected *for* holding a NUL must still be kept: NULs in the raw text and raw values are written
as the four visible characters `\x00` (as invalid UTF-8 bytes are), everything else as read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pandas as pd
import psycopg

from ledger_backfill_dagster.entries.fields import SOURCE_FIELDS, raw_fields
from ledger_backfill_dagster.lib import exact_json
from ledger_backfill_dagster.lib.sql_files import query


def raw_rows(staged: pd.DataFrame, source_row_ids: pd.Series) -> pd.DataFrame:
    """The staged (untransformed) values of the given rows, as JSON objects."""
    rows = staged.loc[staged["source_row_id"].isin(source_row_ids)]
    return raw_frame(rows, raw_documents(rows))


def raw_documents(rows: pd.DataFrame) -> list[str]:
    """Each staged row's untransformed values as a JSON object (columns no layout names
    included). Depends on nothing but the row, so it can run once over many partitions' rows."""
    documents = []
    for record in rows[["source_row_id", *SOURCE_FIELDS, "extra_columns"]].itertuples(index=False):
        values = dict(zip(SOURCE_FIELDS, record[1:-1], strict=True))
        document = raw_fields({k: (None if v is pd.NA else v) for k, v in values.items()})
        if record[-1] is not pd.NA and record[-1] is not None:
            # Exact numbers: a float would bend them, and one JSONB cannot store is kept as
            # its text, so the reject itself is always stored.
            # (the readers stage the extra columns as one JSON object)
            document.update(cast(dict, exact_json.loads(record[-1])[0]))
        documents.append(exact_json.dumps(document))
    return documents


def raw_frame(rows: pd.DataFrame, documents: list[str]) -> pd.DataFrame:
    """`raw_rows`' frame for these staged rows and their documents. Column types follow the
    rows given (`line_number` with a missing value becomes float), so give one partition's."""
    return pd.DataFrame(
        {
            "source_row_id": rows["source_row_id"].to_numpy(),
            "source_file": rows["source_file"].to_numpy(),
            "line_number": rows["line_number"].to_numpy(),
            "raw_row": documents,
        }
    )


def replace_rejects(
    conn: psycopg.Connection,
    *,
    source_id: str,
    source_type: str,
    partition_key: str | None,
    stage: str,
    rejects: pd.DataFrame,
    run_id: str | None,
) -> int:
    """Make the stored rejects of (source, partition, stage) exactly `rejects`, atomically, so a
    re-run after a fix leaves no stale reject behind and a repeated run records each row once."""
    params = {"source_id": source_id, "stage": stage, "partition_key": partition_key}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(query("rejects/clear_stage"), params)
        cur.executemany(
            query("rejects/upsert_reject"),
            _insert_params(source_id, source_type, partition_key, stage, rejects, run_id),
        )
    return len(rejects)


def replace_partition_rejects(
    conn: psycopg.Connection,
    *,
    source_id: str,
    source_type: str,
    stage: str,
    rejects: Mapping[str, pd.DataFrame],
    run_id: str | None,
) -> int:
    """`replace_rejects` for many partitions at once: one transaction and one DELETE instead of a
    round trip per partition. The stored rejects of (source, K, stage) become exactly
    `rejects[K]` for every key K given, so a partition given an empty frame keeps no reject."""
    if not rejects:
        return 0
    params = {"source_id": source_id, "stage": stage, "partition_keys": list(rejects)}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(query("rejects/clear_partitions"), params)
        rows = [
            row
            for key, frame in rejects.items()
            for row in _insert_params(source_id, source_type, key, stage, frame, run_id)
        ]
        if rows:
            cur.executemany(query("rejects/upsert_reject"), rows)
    return sum(len(frame) for frame in rejects.values())


def _insert_params(
    source_id: str,
    source_type: str,
    partition_key: str | None,
    stage: str,
    rejects: pd.DataFrame,
    run_id: str | None,
) -> list[tuple]:
    # Any: the cells are what the frame holds (`reasons` a list), not the scalars pandas-stubs
    # types a row's attributes as.
    rows: Iterator[Any] = rejects.itertuples(index=False)
    return [
        (
            source_id,
            source_type,
            partition_key,
            int(row.source_row_id),
            _none(row.source_file),
            None if _none(row.line_number) is None else int(row.line_number),
            stage,
            _storable_text(_none(row.raw_text)),
            _storable_json(_none(row.raw_row)),
            list(row.reasons),
            run_id,
        )
        for row in rows
    ]


NUL = "\x00"
VISIBLE_NUL = "\\x00"


def _storable_text(value: object) -> object:
    if isinstance(value, str) and NUL in value:
        return value.replace(NUL, VISIBLE_NUL)
    return value


def _storable_json(value: object) -> object:
    """JSON text JSONB accepts: NULs inside strings (keys too) made visible."""
    if not isinstance(value, str) or "\\u0000" not in value:
        return value

    def clean(node: object) -> object:
        if isinstance(node, str):
            return node.replace(NUL, VISIBLE_NUL)
        if isinstance(node, dict):
            return {clean(k): clean(v) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    return exact_json.dumps(clean(exact_json.loads(value)[0]))


def _none(value: object) -> object:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and value != value:
        return None
    return value


POST_STAGE = "post"


def record_refused_row(
    cur: psycopg.Cursor,
    source_id: str,
    source_type: str,
    partition_key: str,
    entry: Mapping[str, Any],
    reason: str,
    run_id: str | None,
) -> None:
    """Quarantine one validated entry the database itself refused (stage `post`), with the
    database's reason: the last line of defence behind the contract's own bounds. `entry` holds
    the cells of one validated frame row."""
    values = {name: _json_value(value) for name, value in entry.items()}
    cur.execute(
        query("rejects/upsert_reject"),
        (
            source_id,
            source_type,
            partition_key,
            int(entry["source_row_id"]),
            None,
            None if _none(entry.get("line_number")) is None else int(entry["line_number"]),
            POST_STAGE,
            None,
            _storable_json(json.dumps(values, ensure_ascii=False)),
            [reason],
            run_id,
        ),
    )


def _json_value(value: object) -> object:
    value = _none(value)
    if hasattr(value, "item") and not isinstance(value, str):  # a numpy scalar
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
