"""A source row key is stored with every entry, so the text it hashes must never change: the fast
builders in entries/row_identity.py write exactly what json.dumps and pandas' strftime wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.row_identity import _json_list, _utc_texts

instants = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=12))
def test_the_key_material_is_what_json_dumps_writes(texts: list[str]) -> None:
    assert _json_list(texts) == json.dumps(texts, ensure_ascii=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(instants, min_size=1, max_size=40))
def test_instants_are_written_as_pandas_strftime_wrote_them(values: list[datetime | None]) -> None:
    series = pd.Series(
        pd.array(
            [pd.NaT if v is None else pd.Timestamp(v.replace(tzinfo=UTC)) for v in values],
            dtype="datetime64[us, UTC]",
        )
    )
    before = series.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%f").to_numpy(object)
    assert list(_utc_texts(series)) == [t if isinstance(t, str) else None for t in before]
