"""Issue 13, classes 2–4: a source row is posted once, whatever changes between runs.

Real `dagster asset materialize` runs (subprocesses) on a real PostgreSQL:

- re-running the same rows after LEDGER_ID, SOURCE_TIMEZONE or ACCOUNT_MAP_FILE changed posts
  nothing: each affected row is a CONFLICT (held, shown), before anything commits;
- a re-export with rows inserted in the middle posts exactly the new rows, the others are
  ALREADY_POSTED (not duplicates), and the report reconciles; FORCE_REDO too;
- two identical payments without a reference are two entries; a corrected row without a
  reference is held beside the row that vanished, never silently swapped;
- a row the database cannot store (a referenceId of kilobytes) is a reject with its reason, and
  its neighbours post.

A Hypothesis property changes one setting at random between two runs over random rows.
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster_tests.support.hardening_support import (
    write_accounts as write_accounts_file,
)
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    balances,
    cli_materialize,
    materialize_range,
    use_source_files,
)

ACCOUNTS = [("U1", "USD"), ("U2", "USD"), ("U3", "USD"), ("M1", "USD")]
FIRST, LAST = "2024-03-30", "2024-04-01"


def write_accounts(folder: Path) -> Path:
    return write_accounts_file(folder / "accounts.csv", dict(ACCOUNTS))


def row(
    amount: str,
    when: str,
    reference: str = "",
    ledger: str = "",
    debit: str = "U1",
    credit: str = "U2",
    metadata: str = "",
) -> dict[str, str]:
    values = dict.fromkeys(CANONICAL_FIELDS, "")
    values.update(
        ledgerId=ledger,
        debitAccountId=debit,
        creditAccountId=credit,
        amount=amount,
        currencyCode="USD",
        transactionType="PAYMENT",
        referenceId=reference,
        timestampUtc=when,
        metadata=metadata,
    )
    return values


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CANONICAL_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def entries(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]


def outcomes(conn: psycopg.Connection) -> dict[str, int]:
    return {
        name: conn.execute(f"SELECT count(*) FROM ledger_backfill_{name}").fetchone()[0]  # noqa: S608
        for name in ("duplicates", "conflicts", "rejects")
    }


def run_cli(env: dict[str, str], extra: dict[str, str] | None = None) -> str:
    result = cli_materialize(FIRST, LAST, {**env, **(extra or {})})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


# Naive local times (SOURCE_TIMEZONE applies) and rows without ledgerId (LEDGER_ID applies), with
# and without references; accounts SRC-* mapped by ACCOUNT_MAP_FILE.
SETTING_ROWS = [
    row("10.00", "2024-03-31 09:00:00", reference="R-1"),
    row("11.00", "2024-03-31 10:00:00"),
    row("12.00", "2024-03-31T11:00:00Z", reference="R-2"),
    row("13.00", "2024-03-31T12:00:00Z", debit="SRC-A"),
    row("14.00", "2024-04-01 23:30:00", debit="SRC-A", reference="R-3"),
]


@pytest.mark.parametrize(
    ("first", "second", "affected"),
    [
        ({"LEDGER_ID": "MASTER"}, {"LEDGER_ID": "OTHER"}, 5),
        ({"SOURCE_TIMEZONE": "UTC"}, {"SOURCE_TIMEZONE": "Asia/Tokyo"}, 3),
        ({"ACCOUNT_MAP_FILE": "map-a.csv"}, {"ACCOUNT_MAP_FILE": "map-b.csv"}, 2),
    ],
    ids=["LEDGER_ID", "SOURCE_TIMEZONE", "ACCOUNT_MAP_FILE"],
)
def test_a_changed_setting_never_posts_a_source_row_again(
    tmp_path: Path,
    backfill_env: dict[str, str],
    conn: psycopg.Connection,
    first: dict[str, str],
    second: dict[str, str],
    affected: int,
) -> None:
    (tmp_path / "map-a.csv").write_text("sourceId,ledgerId\nSRC-A,U3\n")
    (tmp_path / "map-b.csv").write_text("sourceId,ledgerId\nSRC-A,M1\n")
    write_rows(tmp_path / "export.csv", SETTING_ROWS)
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(tmp_path / "export.csv"),
        "ACCOUNTS_FILE": str(write_accounts(tmp_path)),
        "ACCOUNT_MAP_FILE": str(tmp_path / "map-a.csv"),
    }

    def resolved(extra: dict[str, str]) -> dict[str, str]:
        return {k: str(tmp_path / v) if k.endswith("_FILE") else v for k, v in extra.items()}

    run_cli(env, resolved(first))
    assert entries(conn) == len(SETTING_ROWS)
    before = balances(conn)

    run_cli(env, resolved(second))
    assert entries(conn) == len(SETTING_ROWS), "a source row was posted twice"
    assert balances(conn) == before
    held = conn.execute(
        "SELECT count(*) FROM ledger_backfill_conflicts WHERE same_source_row"
    ).fetchone()[0]
    assert held == affected
    assert outcomes(conn)["duplicates"] == 0
    assert_ledger_invariants(conn)

    # Back to the first settings: every row is this source's own entry again, nothing held.
    run_cli(env, resolved(first))
    assert entries(conn) == len(SETTING_ROWS)
    assert outcomes(conn) == {"duplicates": 0, "conflicts": 0, "rejects": 0}


def test_a_reexport_with_rows_inserted_posts_exactly_the_new_rows(
    tmp_path: Path, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    day = [
        row(f"{n}.00", f"2024-03-31T{n:02d}:00:00Z", reference=f"R-{n}" if n % 2 else "")
        for n in range(1, 11)
    ]
    export = tmp_path / "export.csv"
    write_rows(export, day)
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(export),
        "ACCOUNTS_FILE": str(write_accounts(tmp_path)),
    }
    run_cli(env)
    assert entries(conn) == 10

    inserted = [row("99.00", "2024-03-31T05:30:00Z"), row("98.00", "2024-03-31T05:31:00Z", "N-1")]
    write_rows(export, day[:5] + inserted + day[5:])
    output = run_cli(env)
    assert entries(conn) == 12
    assert outcomes(conn) == {"duplicates": 0, "conflicts": 0, "rejects": 0}
    assert "DOES NOT RECONCILE" not in output
    assert_ledger_invariants(conn)

    run_cli(env, {"FORCE_REDO": "true"})
    assert entries(conn) == 12
    assert outcomes(conn) == {"duplicates": 0, "conflicts": 0, "rejects": 0}
    statuses = conn.execute(
        "SELECT DISTINCT status FROM ledger_backfill_checkpoints WHERE partition_key = '2024-03-31'"
    ).fetchall()
    assert statuses == [("COMPLETED",)]


def test_identical_payments_post_twice_and_a_corrected_row_is_held(
    tmp_path: Path, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    same = row("5.00", "2024-03-31T08:00:00Z")
    other = row("6.00", "2024-03-31T09:00:00Z")
    export = tmp_path / "export.csv"
    write_rows(export, [same, other, dict(same)])
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(export),
        "ACCOUNTS_FILE": str(write_accounts(tmp_path)),
    }
    run_cli(env)
    assert entries(conn) == 3  # two identical payments without a reference are two entries
    assert balances(conn)["U1"] == Decimal("16.00")

    corrected = row("6.50", "2024-03-31T09:00:00Z")  # the 6.00 row, corrected
    write_rows(export, [same, corrected, dict(same)])
    run_cli(env)
    assert entries(conn) == 3, "a corrected row without a reference was posted beside the old"
    held = conn.execute(
        "SELECT incoming_entry->>'amount', existing_entry->>'amount', same_source_row"
        " FROM ledger_backfill_conflicts"
    ).fetchall()
    assert held == [("6.50", "6.00", True)]
    assert_ledger_invariants(conn)


def test_a_row_the_database_cannot_index_is_a_reject_not_a_failed_day(
    tmp_path: Path, backfill_env: dict[str, str], conn: psycopg.Connection
) -> None:
    import secrets

    huge = secrets.token_hex(3000)  # 6 kB of incompressible text: over the B-tree row limit
    rows = [
        row("1.00", "2024-03-31T01:00:00Z", reference="OK-1"),
        row("2.00", "2024-03-31T02:00:00Z", reference=huge),
        row("3.00", "2024-03-31T03:00:00Z", ledger="L" * 300, reference="OK-2"),
        row("4.00", "2024-03-31T04:00:00Z", reference="OK-3"),
        row("5.00", "2024-04-01T04:00:00Z", reference="OK-4"),
    ]
    export = tmp_path / "export.csv"
    write_rows(export, rows)
    env = {
        **backfill_env,
        "BACKFILL_SOURCE_FILE": str(export),
        "ACCOUNTS_FILE": str(write_accounts(tmp_path)),
    }
    run_cli(env)
    assert entries(conn) == 3
    reasons = conn.execute(
        "SELECT line_number, reasons FROM ledger_backfill_rejects ORDER BY line_number"
    ).fetchall()
    assert reasons == [
        (3, ["referenceId: longer than 2048 bytes"]),
        (4, ["ledgerId: longer than 256 bytes"]),
    ]
    run_cli(env)  # and again: nothing fails, nothing moves
    assert entries(conn) == 3
    assert_ledger_invariants(conn)


def test_a_row_the_database_refuses_at_posting_is_quarantined(
    ledger_db: object, conn: psycopg.Connection
) -> None:
    """The last line of defence behind the contract: a value the database refuses when the batch
    is posted (here a CHECK the contract does not know) isolates that row as a `post` reject."""
    import pandas as pd

    from ledger_backfill_dagster.entries.validation import POSTABLE_COLUMNS
    from ledger_backfill_dagster.ledger.posting import PartitionPlan, PostingOptions, post_partition

    for account, currency in ACCOUNTS:
        conn.execute(
            "INSERT INTO bank_accounts (id, currency_code, allow_negative) VALUES (%s, %s, true)",
            (account, currency),
        )
    conn.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT test_no_poison"
        " CHECK (transaction_type <> 'POISON')"
    )
    frame = pd.DataFrame(
        [
            {
                "source_row_id": n,
                "line_number": n + 1,
                "ledger_id": "MASTER",
                "debit_account_id": "U1",
                "credit_account_id": "U2",
                "amount": "1.00",
                "currency_code": "USD",
                "credit_amount": "1.00",
                "credit_currency_code": "USD",
                "asset_type": "fiat",
                "transaction_type": "POISON" if n in (3, 7) else "PAYMENT",
                "reference_id": f"P-{n}",
                "timestamp_utc": pd.Timestamp("2024-03-31T01:00:00Z"),
                "fx_rate": None,
                "metadata": None,
                "source_row_key": f"k{n}",
                "source_row_occurrence": 1,
                "reference_generated": False,
            }
            for n in range(1, 11)
        ]
    )[POSTABLE_COLUMNS]
    plan = PartitionPlan("SRC", "CSV", "2024-03-31", "run-1", frame)
    outcome = post_partition(
        ledger_db.connect,  # type: ignore[attr-defined]
        plan,
        PostingOptions(batch_size=4, retry_delay_ms=10),
    )
    assert outcome.status == "COMPLETED"
    assert outcome.posted == 8 and outcome.refused == 2
    rejects = conn.execute(
        "SELECT source_row_id, stage, reasons[1] FROM ledger_backfill_rejects ORDER BY 1"
    ).fetchall()
    assert [(r[0], r[1]) for r in rejects] == [(3, "post"), (7, "post")]
    assert all("test_no_poison" in r[2] for r in rejects)
    processed = conn.execute(
        "SELECT total_processed, total_successful FROM ledger_backfill_checkpoints"
    ).fetchone()
    assert processed == (10, 8)
    assert_ledger_invariants(conn)


SETTINGS = st.sampled_from(
    [
        ("LEDGER_ID", "MASTER", "OTHER"),
        ("SOURCE_TIMEZONE", "UTC", "America/New_York"),
        ("SOURCE_TIMEZONE", "Asia/Tokyo", "UTC"),  # zones without a DST change that day
    ]
)
ROWS = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=99_999),  # cents
        st.integers(min_value=0, max_value=47),  # half hours from 2024-03-31 00:00
        st.booleans(),  # with a reference
        st.booleans(),  # naive timestamp
        st.sampled_from(["", "MASTER", "SIDE"]),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=SETTINGS, spec=ROWS)
def test_property_no_setting_change_posts_a_row_twice(
    tmp_path_factory: pytest.TempPathFactory,
    backfill_env: dict[str, str],
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    change: tuple[str, str, str],
    spec: list[tuple[int, int, bool, bool, str]],
) -> None:
    folder = tmp_path_factory.mktemp("prop")
    conn.execute(
        "TRUNCATE ledger_entries, dual_ledger_outbox, ledger_backfill_checkpoints,"
        " ledger_backfill_duplicates, ledger_backfill_conflicts, ledger_backfill_rejects"
    )
    conn.execute("UPDATE bank_accounts SET balance = 0, available_balance = 0")
    rows = []
    for n, (cents, half_hours, referenced, naive, ledger) in enumerate(spec):
        when = f"2024-03-31 {half_hours // 2:02d}:{30 * (half_hours % 2):02d}:00"
        rows.append(
            row(
                f"{cents // 100}.{cents % 100:02d}",
                when if naive else when.replace(" ", "T") + "Z",
                reference=f"P-{n}" if referenced else "",
                ledger=ledger,
            )
        )
    write_rows(folder / "export.csv", rows)
    use_source_files(
        monkeypatch,
        folder / "export.csv",
        write_accounts(folder),
        LEDGER_BACKFILL_HOME=str(folder / "state"),
    )
    name, before, after = change
    monkeypatch.setenv(name, before)
    materialize_range(FIRST, LAST)
    posted = entries(conn)
    first_balances = balances(conn)
    assert posted + sum(outcomes(conn).values()) == len(rows)

    monkeypatch.setenv(name, after)
    materialize_range(FIRST, LAST, raise_on_error=False)
    assert entries(conn) == posted, json.dumps(rows)
    assert balances(conn) == first_balances
    assert_ledger_invariants(conn)


def test_a_ledger_built_before_row_keys_is_never_posted_twice(
    tmp_path: Path,
    backfill_env: dict[str, str],
    conn: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ledger posted by the release before migration 008 has no source_row_key: its entries
    are recognised by (ledger_id, reference_id) (generated ids of a first occurrence are what
    that release generated) or, after a setting changed, by their old line-based row id."""
    rows = [row(f"{n}.00", f"2024-03-31T{n:02d}:00:00Z", reference=f"R-{n}" if n % 2 else "")
            for n in range(1, 9)]  # fmt: skip
    export = tmp_path / "export.csv"
    write_rows(export, rows)
    use_source_files(monkeypatch, export, write_accounts(tmp_path))
    materialize_range(FIRST, LAST)
    conn.execute("UPDATE ledger_entries SET source_row_key = NULL")  # as that release left it
    before = balances(conn)

    materialize_range(FIRST, LAST)  # the same export again, FORCE_REDO as a user would
    monkeypatch.setenv("FORCE_REDO", "true")
    materialize_range(FIRST, LAST)
    assert entries(conn) == 8 and balances(conn) == before
    assert outcomes(conn) == {"duplicates": 0, "conflicts": 0, "rejects": 0}

    write_rows(export, rows[:3] + [row("50.00", "2024-03-31T03:30:00Z")] + rows[3:])
    materialize_range(FIRST, LAST)  # a re-export with a row inserted: only it posts
    assert entries(conn) == 9
    assert outcomes(conn) == {"duplicates": 0, "conflicts": 0, "rejects": 0}

    write_rows(export, rows)
    conn.execute("UPDATE ledger_entries SET source_row_key = NULL")
    monkeypatch.setenv("LEDGER_ID", "OTHER")  # a setting changed: held, never posted again
    materialize_range(FIRST, LAST, raise_on_error=False)
    assert entries(conn) == 9
    assert_ledger_invariants(conn)
