"""A long daily history with few entries, end to end through the CLI: 3,100 daily partitions.

Small partitions are posted in groups (ledger/group_posting.py); this test holds the long-history
path to the same promises as any other: every entry exactly once with exact balances, the earliest
partition's version of a reference wins across days, every partition's checkpoint and its Dagster
status recorded day by day, and a second run changes nothing.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    balances,
    cli_materialize,
    ledger_snapshot,
)

FIRST = date(2016, 1, 1)
DAYS = 3_100
LAST = FIRST + timedelta(days=DAYS - 1)
ACCOUNTS = [f"ACC-{i:02d}" for i in range(12)]
CONFLICT_DAYS = (200, 201)  # the same reference on both days, with different amounts
REPEAT_DAY = 300  # a row repeated exactly: a duplicate
REJECT_DAY = 400  # a row breaking the contract


class History:
    def __init__(self, root: Path) -> None:
        self.entries = root / "entries.csv"
        self.accounts = root / "accounts.csv"
        self.posted: list[list[str]] = []  # the rows that must end in the ledger
        self.valid_per_day: Counter[str] = Counter()  # rows passing the contract, per partition


def _write_history(root: Path) -> History:
    rng = random.Random(20261207)
    history = History(root)
    root.mkdir(parents=True, exist_ok=True)
    with history.accounts.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accountId", "currencyCode", "allowNegative"])
        writer.writerows([(a, "USD", "true") for a in ACCOUNTS])
    with history.entries.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CANONICAL_FIELDS)
        for d in range(DAYS):
            day = FIRST + timedelta(days=d)
            key = day.isoformat()
            for n in range(rng.choice((0, 0, 1, 1, 1, 2, 3))):
                debit, credit = rng.sample(ACCOUNTS, 2)
                cents = rng.randrange(1, 10**9)
                row = [
                    "MASTER",
                    debit,
                    credit,
                    f"{cents // 100}.{cents % 100:02d}",
                    "USD",
                    "fiat",
                    "TRANSFER",
                    f"H-{key}-{n}",
                    f"{key}T{n:02d}:30:00Z",
                    "",
                    "",
                ]
                writer.writerow(row)
                history.posted.append(row)
                history.valid_per_day[key] += 1
            if d in CONFLICT_DAYS:
                row = ["MASTER", ACCOUNTS[0], ACCOUNTS[1], f"{d}.00", "USD", "fiat", "TRANSFER"]
                writer.writerow([*row, "SAME-REF", f"{key}T12:00:00Z", "", ""])
                history.valid_per_day[key] += 1
                if d == CONFLICT_DAYS[0]:  # the earlier partition's version is the one posted
                    history.posted.append([*row, "SAME-REF", f"{key}T12:00:00Z", "", ""])
            if d == REPEAT_DAY:
                row = ["MASTER", ACCOUNTS[2], ACCOUNTS[3], "7.07", "USD", "fiat", "TRANSFER"]
                row += ["REPEATED", f"{key}T13:00:00Z", "", ""]
                writer.writerows([row, row])
                history.posted.append(row)
                history.valid_per_day[key] += 2
            if d == REJECT_DAY:
                row = ["MASTER", ACCOUNTS[4], ACCOUNTS[5], "1.2.3", "USD", "fiat", "TRANSFER"]
                writer.writerow([*row, "BROKEN", f"{key}T14:00:00Z", "", ""])
    return history


def _expected_balances(rows: list[list[str]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in rows:
        amount = Decimal(row[3])
        totals[row[1]] = totals.get(row[1], Decimal(0)) + amount
        totals[row[2]] = totals.get(row[2], Decimal(0)) - amount
    return {account: value for account, value in totals.items() if value != 0}


@pytest.mark.slow
def test_long_daily_history_posts_exactly_and_records_every_day(
    tmp_path: Path, backfill_env: dict[str, str], database_url: str
) -> None:
    history = _write_history(tmp_path / "data")
    home = dagster_home(tmp_path)
    env = {
        **backfill_env,
        "DAGSTER_HOME": str(home),
        "BACKFILL_START_DATE": FIRST.isoformat(),
        "BACKFILL_SOURCE_FILE": str(history.entries),
        "ACCOUNTS_FILE": str(history.accounts),
    }
    done = cli_materialize(FIRST.isoformat(), LAST.isoformat(), env, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]

    keys = [(FIRST + timedelta(days=d)).isoformat() for d in range(DAYS)]
    with psycopg.connect(database_url) as conn:
        assert_ledger_invariants(conn)
        assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == len(
            history.posted
        )
        stored = {k: v for k, v in balances(conn).items() if v != 0}
        assert stored == _expected_balances(history.posted)
        winner = conn.execute(
            "SELECT backfill_partition, amount FROM ledger_entries WHERE reference_id = 'SAME-REF'"
        ).fetchall()
        first_day = (FIRST + timedelta(days=CONFLICT_DAYS[0])).isoformat()
        assert winner == [(first_day, Decimal(f"{CONFLICT_DAYS[0]}.00"))]
        held = conn.execute(
            "SELECT partition_key FROM ledger_backfill_conflicts WHERE reference_id = 'SAME-REF'"
        ).fetchall()
        assert held == [((FIRST + timedelta(days=CONFLICT_DAYS[1])).isoformat(),)]
        assert conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0] == 1
        checkpoints = conn.execute(
            "SELECT partition_key, status, total_to_process, total_processed"
            "  FROM ledger_backfill_checkpoints ORDER BY partition_key"
        ).fetchall()
        assert [c[0] for c in checkpoints] == keys  # one checkpoint per day, none missing
        assert {c[1] for c in checkpoints} == {"COMPLETED"}
        assert {c[0]: c[2] for c in checkpoints} == {k: history.valid_per_day[k] for k in keys}
        assert all(c[2] == c[3] for c in checkpoints)
        before = ledger_snapshot(conn)

    # Dagster shows every day's status on the posting and report assets.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for asset in ("posted_batches", "reconciliation_report"):
            materialized = instance.get_materialized_partitions(dg.AssetKey(asset))
            assert materialized == set(keys), asset
        records = instance.fetch_materializations(dg.AssetKey("posted_batches"), limit=DAYS).records
        grouped = [
            r
            for r in records
            if r.asset_materialization is not None
            and r.asset_materialization.metadata["posted_in_group_of"].value > 1
        ]
        assert len(grouped) > DAYS // 2  # the small days really were posted in groups

    again = cli_materialize(FIRST.isoformat(), LAST.isoformat(), env, timeout=1500)
    assert again.returncode == 0, again.stderr[-3000:]
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before
        assert_ledger_invariants(conn)
