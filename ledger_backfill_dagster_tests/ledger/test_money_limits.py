"""Money at the contract's limits (issue #13, class 5).

The contract admits amounts of up to 24 digits before the point and the currency's minor units
after it (18 for currencies without ISO minor units, such as XAU). Control totals must be exact
at any such size and any count of them, and a report that does not reconcile must fail the run
(a non-zero exit of `dagster asset materialize`), never only say so.
"""

from __future__ import annotations

import csv
import tempfile
from collections import defaultdict
from decimal import Context, Decimal, Inexact
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger_backfill_dagster.entries.contract import MAX_INTEGER_DIGITS
from ledger_backfill_dagster.entries.currencies import places_table
from ledger_backfill_dagster.ledger.reconcile import ControlTotal, source_control_totals
from ledger_backfill_dagster.resources.stage_store import StageStore
from ledger_backfill_dagster_tests.support.hardening_support import (
    Cli,
    entry,
    ok,
    write_accounts,
    write_entries,
)
from ledger_backfill_dagster_tests.support.helpers import assert_ledger_invariants

EXACT = Context(prec=200, traps=[Inexact])
ACCOUNTS = {
    "U1": "USD",
    "U2": "USD",
    "G1": "XAU",
    "G2": "XAU",
    "J1": "JPY",
    "J2": "JPY",
    "B1": "BHD",
    "B2": "BHD",
}
PAIRS = {"USD": ("U1", "U2"), "XAU": ("G1", "G2"), "JPY": ("J1", "J2"), "BHD": ("B1", "B2")}
LARGEST = {  # 24 digits before the point, every minor unit after it
    currency: "9" * MAX_INTEGER_DIGITS + ("." + "9" * places if places else "")
    for currency, places in (("USD", 2), ("XAU", 18), ("JPY", 0), ("BHD", 3))
}


def _total(amounts: list[str]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = EXACT.add(total, Decimal(amount))
    return total


def _limit_rows() -> tuple[list[dict[str, str]], dict[str, list[str]], dict[str, list[str]]]:
    """Rows at the limits; (rows, amounts expected posted per currency, held per currency)."""
    rows: list[dict[str, str]] = []
    posted: dict[str, list[str]] = defaultdict(list)
    held: dict[str, list[str]] = defaultdict(list)

    def add(reference: str, amount: str, currency: str) -> dict[str, str]:
        debit, credit = PAIRS[currency]
        when = f"2024-01-01T10:{len(rows):02d}:00Z"
        rows.append(entry(reference, debit, credit, amount, currency, when=when))
        return rows[-1]

    for n in range(10):  # the ten: their sum once wrapped around to a negative total
        posted["USD"].append(add(f"TEN-{n}", "99999999999999999999.99", "USD")["amount"])
    for digits in range(21, MAX_INTEGER_DIGITS + 1):
        posted["USD"].append(add(f"USD-{digits}", "9" * digits + ".99", "USD")["amount"])
        posted["XAU"].append(add(f"XAU-{digits}", "9" * digits + "." + "9" * 18, "XAU")["amount"])
    for currency, amount in LARGEST.items():
        for n in range(3):
            posted[currency].append(add(f"MAX-{currency}-{n}", amount, currency)["amount"])
    posted["XAU"].append(add("XAU-TINY", "0." + "0" * 17 + "1", "XAU")["amount"])
    posted["JPY"].append(add("JPY-ROUND", "1" + "0" * 23, "JPY")["amount"])
    # Held rows count in the control totals too: an exact repeat (a duplicate) and a repeat
    # with another amount (a conflict), both at the limit.
    duplicate = next(r for r in rows if r["referenceId"] == "MAX-XAU-0")
    rows.append(dict(duplicate))
    held["XAU"].append(duplicate["amount"])
    conflict = {**rows[0], "amount": LARGEST["USD"]}
    rows.append(conflict)
    held["USD"].append(conflict["amount"])
    add("TOO-BIG", "1" + "0" * MAX_INTEGER_DIGITS, "USD")  # 25 digits: rejected
    return rows, posted, held


def _control_totals_csv(reports: Path) -> dict[str, dict[str, str]]:
    [path] = (reports / "reconciliation").glob("*_control_totals.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["currency"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_amounts_at_the_limits_reconcile_exactly_and_a_report_that_does_not_fails_the_run(
    tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, database_url
) -> None:
    rows, posted, held = _limit_rows()
    source = write_entries(tmp_path / "data" / "limits.csv", rows)
    cli = Cli(
        tmp_path, backfill_env, monkeypatch, source, write_accounts(tmp_path / "a.csv", ACCOUNTS)
    )
    ok(cli.materialize())

    markdown = next((cli.reports / "reconciliation").glob("*.md")).read_text()
    assert markdown.startswith("# Reconciliation: RECONCILES"), markdown
    totals = _control_totals_csv(cli.reports)
    assert set(totals) == set(PAIRS)
    for currency, row in totals.items():
        valid = posted[currency] + held[currency]
        assert int(row["source_count"]) == len(valid)
        assert Decimal(row["source_sum"]) == _total(valid), currency
        assert Decimal(row["ledger_sum"]) == _total(posted[currency]), currency
        assert Decimal(row["held_sum"]) == _total(held[currency]), currency
        assert row["matches"] == "True"
    # The sums are far beyond what decimal128(38, 18) or a 28-digit Decimal context can hold.
    assert Decimal(totals["XAU"]["source_sum"]) > Decimal(10) ** MAX_INTEGER_DIGITS
    assert len(totals["XAU"]["source_sum"].replace(".", "")) > 40

    with psycopg.connect(database_url) as conn:
        stored = dict(
            conn.execute(
                "SELECT currency_code, sum(amount) FROM ledger_entries GROUP BY 1"
            ).fetchall()
        )
        assert stored == {c: _total(a) for c, a in posted.items()}
        balance = dict(conn.execute("SELECT id, balance FROM bank_accounts").fetchall())
        for currency, (debit, credit) in PAIRS.items():
            # EXACT.minus: unary minus in the default context would round to 28 digits.
            assert balance[debit] == _total(posted[currency]) == EXACT.minus(balance[credit])
        [reasons] = conn.execute(
            "SELECT reasons FROM ledger_backfill_rejects WHERE raw_row->>'referenceId' = 'TOO-BIG'"
        ).fetchone()
        assert reasons == [f"amount: more than {MAX_INTEGER_DIGITS} digits before the point"]
        assert_ledger_invariants(conn)

        # An entry changed by hand by one minor unit, balances moved with it: only the control
        # totals can tell. The report says so, and the run fails.
        conn.execute(
            "UPDATE ledger_entries SET amount = amount + 0.01, credit_amount = credit_amount + 0.01"
            " WHERE reference_id = 'USD-24'"
        )
        for account, delta in (("U1", "0.01"), ("U2", "-0.01")):
            conn.execute(
                "UPDATE bank_accounts SET balance = balance + %s::numeric,"
                " available_balance = available_balance + %s::numeric WHERE id = %s",
                (delta, delta, account),
            )
        conn.commit()
        assert_ledger_invariants(conn)
    failed = cli.materialize()
    assert failed.returncode != 0
    assert "control_totals_match" in failed.stdout + failed.stderr
    markdown = next((cli.reports / "reconciliation").glob("*.md")).read_text()
    assert markdown.startswith("# Reconciliation: DOES NOT RECONCILE")
    assert "source control totals differ from ledger + held rows" in markdown
    usd = _control_totals_csv(cli.reports)["USD"]
    assert usd["matches"] == "False"
    ledger_and_held = EXACT.add(Decimal(usd["ledger_sum"]), Decimal(usd["held_sum"]))
    assert EXACT.subtract(ledger_and_held, Decimal(usd["source_sum"])) == Decimal("0.01")


# -- properties: the source side of the control totals, without a database ------------------

CURRENCIES = ("USD", "JPY", "BHD", "XAU", "CLF")


@st.composite
def amounts(draw: st.DrawFn) -> tuple[str, str]:
    """(currency, amount) as the contract admits: up to 24 digits before the point, up to the
    currency's minor units after, often at the limits."""
    currency = draw(st.sampled_from(CURRENCIES))
    places = places_table()[currency]
    digits = draw(st.just(MAX_INTEGER_DIGITS) | st.integers(1, MAX_INTEGER_DIGITS))
    lowest = 0 if digits == 1 else 10 ** (digits - 1)
    whole = draw(st.just(10**digits - 1) | st.integers(lowest, 10**digits - 1))
    size = draw(st.just(places) | st.integers(0, places))
    text = str(whole)
    if size:
        text += f".{draw(st.integers(0, 10**size - 1)):0{size}d}"
    assume(Decimal(text) > 0)
    return currency, text


@settings(max_examples=200, deadline=None)
@given(
    days=st.lists(st.lists(amounts(), max_size=40), min_size=1, max_size=4),
    files_per_aggregation=st.sampled_from([1, 2, 256]),
)
def test_source_control_totals_are_exact_at_any_size_the_contract_admits(
    days: list[list[tuple[str, str]]], files_per_aggregation: int
) -> None:
    import ledger_backfill_dagster.ledger.reconcile as reconcile_module

    keys = [f"2024-01-0{n + 1}" for n in range(len(days))]
    expected: dict[str, list[str]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        # A few partitions per Arrow aggregation, so sums also carry over between them.
        patch.setattr(reconcile_module, "CONTROL_TOTAL_FILES", files_per_aggregation)
        store = StageStore(Path(tmp))
        for key, rows in zip(keys, days, strict=True):
            table = pa.table(
                {
                    "currency_code": pa.array([c for c, _ in rows], pa.string()),
                    "amount": pa.array([a for _, a in rows], pa.string()),
                }
            )
            store.write_table("src", "validated", key, table)
            for currency, amount in rows:
                expected[currency].append(amount)
        totals = source_control_totals(store.validated_paths("src", keys))
    assert totals == {c: (len(a), _total(a)) for c, a in expected.items()}


@settings(max_examples=300, deadline=None)
@given(
    ledger=st.lists(amounts(), min_size=1, max_size=30),
    held=st.lists(amounts(), max_size=5),
    nudge=st.sampled_from(["0", "0.000000000000000001", "-0.01", "1"]),
)
def test_a_control_total_matches_exactly_or_not_at_all(
    ledger: list[tuple[str, str]], held: list[tuple[str, str]], nudge: str
) -> None:
    """42-digit sums compared exactly: one unit in the 18th place is a mismatch, never rounded
    away in a 28-digit context."""
    ledger_sum = _total([a for _, a in ledger])
    held_sum = _total([a for _, a in held])
    source_sum = EXACT.add(EXACT.add(ledger_sum, held_sum), Decimal(nudge))
    total = ControlTotal(
        "XAU", len(ledger) + len(held), source_sum, len(ledger), ledger_sum, len(held), held_sum
    )
    assert total.matches is (Decimal(nudge) == 0)
