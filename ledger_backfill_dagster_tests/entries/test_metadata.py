"""Metadata numbers, exactly (issue #13, class 6 and the metadata half of class 4).

Numbers in metadata keep every digit (Decimal, never float), when a row's metadata is stored as
written and when extra columns are merged into it; what PostgreSQL stores equals the source up to
JSONB's own normalisation. A number JSONB cannot store (NUMERIC's range ends at 131,072 digits
before the point and 16,383 after), or a NUL in an extra column, makes the row a reject with its
reason and its raw text, never a failed partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.contract import METADATA_NUL, METADATA_NUMBER_RANGE
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.lib import exact_json
from ledger_backfill_dagster_tests.support.hardening_support import (
    DAY,
    Cli,
    entry,
    ok,
    write_accounts,
    write_entries,
)
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants, ledger_snapshot

STORABLE = [
    "1e400",  # once merged as Infinity, which failed the whole partition on every run
    "-1e-400",
    "1.00000000000000000001",  # once merged as 1.0
    "12345678901234567890.12345678901234567890",
    "9" * 5000,  # more digits than Python's int() takes
    "1E+2",
    "-0",
    "0.0e5",
    "1.50",
    "1e131071",  # the largest power of ten NUMERIC holds
    "1e-16383",  # the smallest
    "123456789e-16375",
]
UNSTORABLE = [
    "1e131072",
    "9" * 131073,
    "1e-16384",
    "0e-1000000",
    "1e1073741824",
    "0e1073741824",
]
NUMBER_REASON = f"metadata: holds text JSONB cannot store ({METADATA_NUMBER_RANGE})"


def _documents(token: str) -> list[str]:
    """Metadata texts holding the number: alone, beside a key the extra columns also have, and
    nested."""
    return [
        f'{{"n": {token}, "note": "mine"}}',
        f'{{"deep": [{{"n": {token}}}, {token}, "x"], "n": 1}}',
    ]


def _rows(tokens: list[str], prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    """(token, metadata text, row) per metadata document of each token."""
    rows = []
    for i, token in enumerate(tokens):
        for j, metadata in enumerate(_documents(token)):
            minute = len(rows)
            when = f"{DAY}T{minute // 60:02d}:{minute % 60:02d}:00Z"
            row = entry(
                f"{prefix}-{i}-{j}", "A1", "A2", "1.00", "USD", metadata=metadata, when=when
            )
            rows.append((token, metadata, row))
    return rows


@pytest.mark.slow
def test_metadata_numbers_are_stored_exactly_and_unstorable_ones_are_rejects(
    tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, database_url
) -> None:
    folder = tmp_path / "data"
    extras = {"note": "theirs", "branch": "north"}
    merged_rows = _rows(STORABLE + UNSTORABLE, "X")
    plain_rows = _rows(STORABLE + UNSTORABLE, "P")
    only_extras = entry("X-ONLY", "A1", "A2", "2.00", "USD", when=f"{DAY}T20:00:00Z")
    with_nul = entry("X-NUL", "A1", "A2", "3.00", "USD", metadata='{"a": 1}', when=f"{DAY}T21:00")
    write_entries(
        folder / "with_extras.csv",
        [
            *({**row, **extras} for _, _, row in merged_rows),
            {**only_extras, **extras},
            {**with_nul, "note": "a\x00b", "branch": "south"},
        ],
        extra_columns=list(extras),
    )
    write_entries(folder / "plain.csv", [row for _, _, row in plain_rows])
    accounts = write_accounts(tmp_path / "accounts.csv", {"A1": "USD", "A2": "USD"})
    cli = Cli(tmp_path, backfill_env, monkeypatch, folder, accounts)
    ok(cli.materialize())

    unstorable = set(UNSTORABLE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        posted = dict(
            conn.execute("SELECT reference_id, metadata::text FROM ledger_entries").fetchall()
        )
        rejects = {
            raw["referenceId"]: (reasons, raw)
            for raw, reasons in conn.execute("SELECT raw_row, reasons FROM ledger_backfill_rejects")
        }

        def jsonb_text(text: str) -> str:
            return conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()[0]

        def merged(metadata: str) -> str:
            return conn.execute(
                "SELECT (%s::jsonb || %s::jsonb)::text", (json.dumps(extras), metadata)
            ).fetchone()[0]

        for rows, expect in ((merged_rows, merged), (plain_rows, jsonb_text)):
            for token, metadata, row in rows:
                reference = row["referenceId"]
                if token in unstorable:
                    assert reference not in posted
                    reasons, raw = rejects[reference]
                    assert reasons == [NUMBER_REASON], reference
                    assert raw["metadata"] == metadata  # the raw text, every digit of it
                    continue
                # What the ledger holds is the source as JSONB normalises it, merged or not:
                # every digit of every number, the row's own keys winning.
                assert posted[reference] == expect(metadata), reference
        # A number's digits, as NUMERIC writes the source's own text.
        for token in STORABLE:
            stored = conn.execute(
                "SELECT metadata->>'n' FROM ledger_entries WHERE reference_id = %s",
                (f"X-{STORABLE.index(token)}-0",),
            ).fetchone()[0]
            assert stored == conn.execute("SELECT %s::numeric::text", (token,)).fetchone()[0]
        assert posted["X-ONLY"] == jsonb_text(json.dumps(extras))
        reasons, raw = rejects["X-NUL"]
        assert reasons == [f"metadata: holds text JSONB cannot store ({METADATA_NUL})"]
        assert raw["note"] == "a\\x00b"  # stored visibly: JSONB cannot hold \u0000 either
        expected_rejects = 2 * 2 * len(UNSTORABLE) + 1
        assert len(rejects) == expected_rejects
        assert len(posted) == 2 * 2 * len(STORABLE) + 1
        assert_ledger_invariants(conn)
        before = ledger_snapshot(conn)

    ok(cli.materialize())  # a re-run: nothing fails, nothing changes
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before


# -- properties -------------------------------------------------------------------------------


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    """One connection for all examples of a property (they only read)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


# Exponents around every edge NUMERIC has, and plain ones.
EDGES = [0, 1, 2, 400, 16383, 16384, 131071, 131072, 1073741823, 1073741824, 2**31, 10**20]
EXPONENTS = st.one_of(
    st.integers(-20, 20),
    st.builds(
        lambda edge, offset: max(edge + offset, 0), st.sampled_from(EDGES), st.integers(-3, 3)
    ),
)


@st.composite
def number_tokens(draw: st.DrawFn) -> str:
    """JSON number tokens: any sign, digits before and after the point, exponent; often at the
    edges of what NUMERIC holds."""
    sign = draw(st.sampled_from(["", "-"]))
    whole = draw(
        st.one_of(
            st.just("0"),
            st.integers(1, 10**30).map(str),
            st.sampled_from([131071, 131072, 131073]).map(lambda n: "9" * n),
        )
    )
    fraction = draw(
        st.one_of(
            st.just(""),
            st.text("0123456789", min_size=1, max_size=25).map(lambda d: "." + d),
            st.sampled_from([16382, 16383, 16384]).map(lambda n: "." + "0" * (n - 1) + "1"),
        )
    )
    exponent = ""
    if draw(st.booleans()):
        power = draw(EXPONENTS)
        mark = draw(st.sampled_from(["e", "E"]))
        power_sign = "-" if power < 0 else draw(st.sampled_from(["", "+"]))
        zeros = "0" * draw(st.integers(0, 3))
        exponent = f"{mark}{power_sign}{zeros}{abs(power)}"
    return f"{sign}{whole}{fraction}{exponent}"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(token=number_tokens())
def test_a_number_is_storable_exactly_when_postgresql_stores_it(
    token: str, pg: psycopg.Connection
) -> None:
    """`exact_json.jsonb_number`'s verdict is PostgreSQL's own, and what it keeps is what
    PostgreSQL makes of the source's text, digit for digit."""
    ours = exact_json.jsonb_number(token)
    try:
        theirs = pg.execute("SELECT %s::jsonb::text", (f"[{token}]",)).fetchone()[0]
    except psycopg.errors.NumericValueOutOfRange:
        theirs = None
    if theirs is None:
        assert isinstance(ours, exact_json.UnstorableNumber)
        return
    if _written_exponent(token) == exact_json.MAX_WRITTEN_EXPONENT + 1:
        return  # PostgreSQL 16+ takes it (a zero), 15 does not: refused for both
    assert isinstance(ours, Decimal)
    assert pg.execute("SELECT %s::jsonb::text", (f"[{ours}]",)).fetchone()[0] == theirs


def _written_exponent(token: str) -> int:
    _, marker, exponent = token.lower().partition("e")
    return abs(int(exponent)) if marker else 0


KEYS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
STRINGS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
SMALL_NUMBERS = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.sampled_from(["0", "1", "7", "12345678901234567890123456789", "9" * 400]),
    st.sampled_from(["", ".0", ".50", ".00000000000000000001", ".1234567890123456789012"]),
    st.sampled_from(["", "e400", "E-400", "e+3", "e-16370", "e131000", "E131072", "e-16390"]),
)


def _object(members: dict[str, str]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in members.items()) + "}"


JSON_VALUES = st.recursive(
    SMALL_NUMBERS
    | STRINGS.map(lambda s: json.dumps(s, ensure_ascii=False))
    | st.sampled_from(["true", "false", "null"]),
    lambda children: (
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.dictionaries(KEYS, children, max_size=3).map(_object)
    ),
    max_leaves=6,
)
DOCUMENTS = st.dictionaries(KEYS, JSON_VALUES, max_size=4).map(_object)
# Extra columns as the CSV reader writes them (text) or an API source (numbers too).
EXTRAS = st.none() | st.dictionaries(
    st.sampled_from(["note", "branch", "n", "rate"]),
    STRINGS.map(lambda s: json.dumps(s)) | SMALL_NUMBERS,
    min_size=1,
    max_size=3,
).map(_object)


def _staged(rows: list[tuple[str, str | None]]) -> pd.DataFrame:
    n = len(rows)
    fields = {name: pd.array([""] * n, dtype="string") for name in CANONICAL_FIELDS}
    fields["metadata"] = pd.array([m for m, _ in rows], dtype="string")
    return pd.DataFrame(
        {
            "source_row_id": pd.array(range(1, n + 1), dtype="Int64"),
            "source_file": pd.array(["x.csv"] * n, dtype="string"),
            "line_number": pd.array(range(2, n + 2), dtype="Int64"),
            **fields,
            "extra_columns": pd.array([e for _, e in rows], dtype="string"),
            "timestamp_utc": pd.Series(pd.to_datetime([f"{DAY}T00:00:00Z"] * n, utc=True)),
        }
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(st.tuples(DOCUMENTS | st.just(""), EXTRAS), min_size=1, max_size=6))
def test_transformed_metadata_is_the_source_as_jsonb_stores_it(
    rows: list[tuple[str, str | None]], pg: psycopg.Connection
) -> None:
    """For any metadata and extra columns: the transformed metadata is, in PostgreSQL, exactly
    `extras || metadata` of the source texts (JSONB's normalisation and nothing else), or the
    row is a reject because PostgreSQL would refuse one of them."""
    out = transform(_staged(rows), TransformRules())
    for (metadata, extras), value, problem in zip(
        rows, out["metadata"], out["metadata_problem"], strict=True
    ):
        texts = [t for t in (extras, metadata or None) if t is not None]
        refused = False
        for text in texts:
            try:
                pg.execute("SELECT %s::jsonb", (text,))
            except psycopg.errors.NumericValueOutOfRange:
                refused = True
        if refused:
            assert problem == METADATA_NUMBER_RANGE
            continue
        assert problem is pd.NA
        if not texts:
            assert value is pd.NA
            continue
        expected = pg.execute(
            "SELECT (" + " || ".join(["%s::jsonb"] * len(texts)) + ")::text", texts
        ).fetchone()[0]
        assert pg.execute("SELECT %s::jsonb::text", (value,)).fetchone()[0] == expected


@settings(max_examples=300, deadline=None)
@given(document=DOCUMENTS)
def test_exact_json_writes_back_every_digit(document: str) -> None:
    """`dumps(loads(text))` holds the same numbers, digit for digit and exponent for exponent
    (as Decimal writes them), the same strings and structure; a number JSONB cannot store comes
    back as its own text, in a string."""

    def number(token: str) -> tuple[str, str]:
        return ("number", token)

    def expected(token: str) -> object:
        value = exact_json.jsonb_number(token)
        return ("number", str(value)) if isinstance(value, Decimal) else token

    parsed, unstorable = exact_json.loads(document)
    written = json.loads(exact_json.dumps(parsed), parse_float=number, parse_int=number)
    assert written == json.loads(document, parse_float=expected, parse_int=expected)
    tokens: list[str] = []
    json.loads(document, parse_float=tokens.append, parse_int=tokens.append)
    assert unstorable == any(
        isinstance(exact_json.jsonb_number(t), exact_json.UnstorableNumber) for t in tokens
    )
