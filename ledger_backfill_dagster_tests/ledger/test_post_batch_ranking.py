"""posting/post_batch.sql ranks only the staged rows whose reference repeats in the batch
(post_stage.reference_repeats, set by posting.stage_table) and inserts plainly first, skipping
unique keys only after a savepoint met one. Whatever the batch, it must insert exactly what ranking
every candidate did: the first candidate (by partition, then source row) of each reference the
ledger does not hold. Checked against real PostgreSQL, in a transaction rolled back per example."""

from __future__ import annotations

import pandas as pd
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.ledger.posting import _post_batch
from ledger_backfill_dagster.lib.sql_files import query

PARAMS = {"source_id": "s", "source_type": "CSV", "partition_key": "2024-01-01", "run_id": "r"}
STAGE_ROW = (
    "INSERT INTO post_stage (partition_key, source_row_id, ledger_id, debit_account_id,"
    " credit_account_id, amount, currency_code, credit_amount, credit_currency_code, asset_type,"
    " transaction_type, reference_id, timestamp_utc, source_row_key, source_row_occurrence,"
    " reference_generated, reference_repeats, known_entry_id, held_against)"
    " VALUES (%s, %s, 'L', 'A', 'B', 1, 'USD', 1, 'USD', 'fiat', 'T', %s,"
    " '2024-01-01T00:00:00Z', %s, 1, false, %s, %s, %s)"
)
# (partition, reference, known to the ledger already, held beside a vanished row)
rows = st.lists(
    st.tuples(
        st.sampled_from(["2024-01-01", "2024-01-02"]),
        st.sampled_from(["R1", "R2", "R3", "R4"]),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=10,
)


def _first_candidates(staged: list[tuple[str, str, bool, bool]], held_by_ledger: set[str]) -> set:
    """(partition, source row id) of the rows ranking every candidate inserts."""
    first: dict[str, tuple[str, int]] = {}
    for row_id, (partition, reference, known, held) in enumerate(staged, start=1):
        if known or held:
            continue
        candidate = (partition, row_id)
        if reference not in first or candidate < first[reference]:
            first[reference] = candidate
    return {c for ref, c in first.items() if ref not in held_by_ledger}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(staged=rows, in_ledger=st.sets(st.sampled_from(["R1", "R2", "R3", "R4"]), max_size=2))
def test_post_batch_inserts_the_first_candidate_of_each_reference(
    conn: psycopg.Connection, staged: list[tuple[str, str, bool, bool]], in_ledger: set[str]
) -> None:
    frame = pd.DataFrame({"ledger_id": "L", "reference_id": [r[1] for r in staged]})
    repeats = frame.duplicated(["ledger_id", "reference_id"], keep=False).tolist()
    met_keys = []
    outcomes = []
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        cur.execute(query("posting/create_post_stage"))
        # Z0 is what known and held rows point at; the others another source posted before.
        for reference in ["Z0", *sorted(in_ledger)]:
            cur.execute(
                "INSERT INTO ledger_entries (ledger_id, debit_account_id, credit_account_id,"
                " amount, currency_code, credit_amount, credit_currency_code, asset_type,"
                " transaction_type, reference_id, timestamp_utc, content_fingerprint)"
                " VALUES ('L', 'A', 'B', 1, 'USD', 1, 'USD', 'fiat', 'T', %s, now(), 'x')",
                (reference,),
            )
        marker = cur.execute("SELECT id FROM ledger_entries WHERE reference_id = 'Z0'").fetchone()[
            0
        ]
        for row_id, ((partition, reference, known, held), repeat) in enumerate(
            zip(staged, repeats, strict=True), start=1
        ):
            known_id = marker if known else None
            held_id = marker if held and not known else None
            cur.execute(
                STAGE_ROW, (partition, row_id, reference, f"k{row_id}", repeat, known_id, held_id)
            )
        for skip_conflicts in (False, True):  # the plain INSERT, then its fallback
            try:
                with conn.transaction():
                    cur.execute(_post_batch(skip_conflicts), PARAMS)
                    posted = cur.execute(
                        "SELECT partition_key, source_row_id FROM post_stage"
                        " WHERE entry_id IS NOT NULL"
                    ).fetchall()
                    outcomes.append(set(posted))
                    raise psycopg.Rollback()
            except psycopg.errors.UniqueViolation:
                met_keys.append(skip_conflicts)
    # The plain INSERT meets a key exactly when the ledger holds a first candidate's reference;
    # ON CONFLICT DO NOTHING never does.
    first_references = {staged[row_id - 1][1] for _, row_id in _first_candidates(staged, set())}
    assert met_keys == ([False] if first_references & in_ledger else [])
    expected = _first_candidates(staged, in_ledger)
    assert all(outcome == expected for outcome in outcomes)
    assert len(outcomes) == 2 - len(met_keys)
