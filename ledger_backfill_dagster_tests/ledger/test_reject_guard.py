"""The reject guard (MAX_REJECT_RATIO, issue 16): a partition whose rejected share passes the
guard is not posted, the others of the same run are, and the run fails naming the partition, its
ratio and its most frequent reasons; a run tag overrides it only with a recorded reason. Real
Dagster runs on real PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.ledger.reject_guard import RATIO_TAG, REASON_TAG, RejectGuard
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.resources.settings import PostingSettings
from ledger_backfill_dagster_tests.support.hardening_support import write_accounts, write_entries
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    failure_text,
    materialize_range,
    use_source_files,
)

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
UP_TO_POSTING = None  # every asset: the check on validated_entries runs too


def _row(day: str, n: int, amount: str) -> dict[str, str]:
    return {
        "ledgerId": "MASTER",
        "debitAccountId": "A-USD",
        "creditAccountId": "B-USD",
        "amount": amount,
        "currencyCode": "USD",
        "assetType": "fiat",
        "transactionType": "TRANSFER",
        "referenceId": f"{day}-{n}",
        "timestampUtc": f"{day}T10:{n // 60:02d}:{n % 60:02d}Z",
    }


def _day(day: str, good: int, bad: int) -> list[dict[str, str]]:
    return [_row(day, n, "1.25") for n in range(good)] + [
        _row(day, good + n, "twelve") for n in range(bad)
    ]


@pytest.fixture
def messy_source(tmp_path: Path, backfill_env, monkeypatch) -> None:
    rows = [
        *_day(DAYS[0], good=25, bad=0),
        *_day(DAYS[1], good=5, bad=20),  # 80% rejected: a wrong setting, not bad luck
        *_day(DAYS[2], good=1, bad=2),  # 67%, but 3 rows: too few to judge
        *_day(DAYS[3], good=25, bad=1),
    ]
    source = write_entries(tmp_path / "export.csv", rows)
    accounts = write_accounts(tmp_path / "accounts.csv", {"A-USD": "USD", "B-USD": "USD"})
    use_source_files(
        monkeypatch, source, accounts, MAX_REJECT_RATIO="0.5", REJECT_GUARD_MIN_ROWS="20"
    )


def _posted_by_day(conn: psycopg.Connection) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT backfill_partition, count(*) FROM ledger_entries GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )


def test_a_partition_past_the_guard_is_held_and_the_others_post(
    messy_source, conn: psycopg.Connection
) -> None:
    with dg.instance_for_test() as instance:
        result = materialize_range(DAYS[0], DAYS[-1], raise_on_error=False, instance=instance)
        records = instance.fetch_materializations(dg.AssetKey("posted_batches"), limit=100)
        # the days that posted are recorded as materialized, each with its own numbers
        materialized = {
            r.asset_materialization.partition: r.asset_materialization.metadata["posted"].value
            for r in records.records
            if r.asset_materialization is not None
        }
    assert materialized == {DAYS[0]: 25, DAYS[2]: 1, DAYS[3]: 25}
    assert not result.success
    assert _posted_by_day(conn) == {DAYS[0]: 25, DAYS[2]: 1, DAYS[3]: 25}
    text = failure_text(result)
    assert "2024-01-02: 20 of 25 rows rejected (80.0%)" in text
    assert "amount" in text  # the most frequent reason is named
    assert "2024-01-03" not in text.split("most frequent")[0]
    assert RATIO_TAG in text and REASON_TAG in text  # how to override
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "rejects_within_guard"
    ]
    assert not check.passed and "2024-01-02" in (check.description or "")
    assert_ledger_invariants(conn)

    # A tag without a reason is refused before anything is posted.
    refused = materialize_range(DAYS[1], DAYS[1], raise_on_error=False, tags={RATIO_TAG: "0.9"})
    assert not refused.success
    assert f"add the tag {REASON_TAG}" in failure_text(refused)
    assert DAYS[1] not in _posted_by_day(conn)

    # With the override and its reason, the held day's valid rows post; the reason is recorded.
    reason = "vendor export of 2 Jan is known to carry text amounts"
    done = materialize_range(DAYS[0], DAYS[-1], tags={RATIO_TAG: "0.9", REASON_TAG: reason})
    assert done.success
    assert _posted_by_day(conn) == {DAYS[0]: 25, DAYS[1]: 5, DAYS[2]: 1, DAYS[3]: 25}
    recorded = [
        m.metadata["reject_guard"].value
        for m in done.asset_materializations_for_node("posted_batches")
        if "reject_guard" in m.metadata
    ]
    assert recorded and all(reason in r for r in recorded)
    assert_ledger_invariants(conn)


@pytest.mark.parametrize("ratio", ["1", None])
def test_the_guard_is_off_by_default_and_with_max_reject_ratio_one(
    messy_source, conn: psycopg.Connection, monkeypatch, ratio: str | None
) -> None:
    if ratio is None:
        monkeypatch.delenv("MAX_REJECT_RATIO")
    else:
        monkeypatch.setenv("MAX_REJECT_RATIO", ratio)
    assert materialize_range(DAYS[0], DAYS[-1]).success
    assert _posted_by_day(conn)[DAYS[1]] == 5  # bad rows never keep the valid ones out


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "NaN", ""])
def test_a_ratio_outside_zero_to_one_is_refused_naming_the_setting(value: str, monkeypatch) -> None:
    monkeypatch.setenv("MAX_REJECT_RATIO", value)
    if value == "":
        defaults = PostingSettings.from_env()  # unset: the defaults
        assert (defaults.max_reject_ratio, defaults.reject_guard_min_rows) == ("1", 1)
        return
    with pytest.raises(SettingsError, match="MAX_REJECT_RATIO must be a number from 0 to 1"):
        PostingSettings.from_env()


def test_the_guard_counts_exactly_and_judges_only_big_enough_partitions() -> None:
    guard = RejectGuard(Decimal("0.5"), min_rows=4)
    held = guard.held(
        valid={"a": 2, "b": 1, "c": 1, "d": 0},
        rejected={"a": 2, "b": 3, "c": 2, "d": 2},
    )
    # a: exactly half is not past 0.5; b: 3 of 4 is; c, d: fewer than 4 rows, not judged
    assert [(h.partition_key, h.ratio) for h in held] == [("b", Decimal("0.75"))]
