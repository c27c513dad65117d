"""Audit & Verification (the seed's step 6): the figures that prove a backfill reconciles.

Every figure is computed from the ledger itself, never from the pipeline's own counters, so a
report can be re-run at any time and catches what the pipeline did not (a nudged balance, a
deleted entry, a missing outbox row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg.rows import dict_row

from ledger_backfill_dagster.entries.currencies import places_table
from ledger_backfill_dagster.lib.rows import one_row
from ledger_backfill_dagster.lib.sql_files import query

# Sums of amounts, exactly. Python's default context keeps 28 digits, fewer than one amount may
# have (24 before the point + 18 after); any count of them sums to far fewer than 1,000 digits,
# and if a result ever had to be rounded, Inexact stops the report instead of bending a total.
EXACT = Context(prec=1000, traps=[Inexact])


def exact_sum(*values: Decimal) -> Decimal:
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


@dataclass
class PartitionAccount:
    partition_key: str
    read: int
    posted: int
    duplicates: int
    conflicts: int
    rejected: int
    checkpoint_status: str | None

    @property
    def unaccounted(self) -> int:
        return self.read - (self.posted + self.duplicates + self.conflicts + self.rejected)

    def as_row(self) -> dict[str, object]:
        """The partition as the report's and the check's tables show it (PARTITION_COLUMNS)."""
        return vars(self) | {"unaccounted": self.unaccounted}


# A partition's accounting as the UI tables show it, in this order.
PARTITION_COLUMNS = (
    "partition_key",
    "read",
    "posted",
    "duplicates",
    "conflicts",
    "rejected",
    "unaccounted",
    "checkpoint_status",
)
# The report's partitions CSV names two of them as its first release did.
PARTITION_CSV_NAMES = {"partition_key": "partition", "checkpoint_status": "checkpoint"}
# An account whose balance differs from its entries (balance_drift.sql), as tables show it.
DRIFT_COLUMNS = ("account_id", "currency_code", "expected_balance", "actual_balance", "difference")
# Debits and credits per ledger and currency, as the UI tables show them (currency_totals.sql).
CURRENCY_TOTAL_COLUMNS = ("ledger_id", "currency", "debits", "credits", "fx_net", "balanced")
# Stored balances against the entries' net per currency (balances_by_currency.sql).
BALANCES_BY_CURRENCY_COLUMNS = ("currency", "stored_balances", "entries_net", "consistent")


@dataclass
class ControlTotal:
    """Count and exact sum per currency: the source's valid rows against the ledger's entries
    plus the rows held as conflicts."""

    currency: str
    source_count: int
    source_sum: Decimal
    ledger_count: int
    ledger_sum: Decimal
    held_count: int
    held_sum: Decimal

    @property
    def matches(self) -> bool:
        return (
            self.source_count == self.ledger_count + self.held_count
            and self.source_sum == exact_sum(self.ledger_sum, self.held_sum)
        )


# A control total as the report's CSV and the asset check's table show it, in this order.
CONTROL_TOTAL_COLUMNS = (
    "currency",
    "source_count",
    "source_sum",
    "ledger_count",
    "ledger_sum",
    "held_count",
    "held_sum",
    "matches",
)


@dataclass
class Reconciliation:
    source_id: str
    partitions: list[PartitionAccount]
    unpartitioned_rejects: int
    entry_verification: dict
    balance_drift: list[dict]
    currency_totals: list[dict]
    balances_by_currency: list[dict]
    outbox_status: list[dict]
    duplicate_references: list[dict]
    control_totals: list[ControlTotal] = field(default_factory=list)
    # How the run being reported loaded the ledger (LOAD_MODE; ledger/load_mode.py)
    load_modes: list[dict] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return sum(p.read for p in self.partitions) + self.unpartitioned_rejects

    def total(self, attribute: str) -> int:
        return sum(getattr(p, attribute) for p in self.partitions)

    @property
    def missing_outbox(self) -> int:
        return sum(r["count"] for r in self.outbox_status if r["status"] == "MISSING")

    @property
    def problems(self) -> list[str]:
        found = []
        unaccounted = [p for p in self.partitions if p.unaccounted]
        if unaccounted:
            found.append(
                "rows unaccounted for in "
                + ", ".join(f"{p.partition_key} ({p.unaccounted:+d})" for p in unaccounted[:10])
            )
        if self.balance_drift:
            found.append(f"{len(self.balance_drift)} account balance(s) differ from their entries")
        if not all(r["balanced"] for r in self.currency_totals):
            found.append("debits and credits differ for a ledger and currency")
        if not all(r["consistent"] for r in self.balances_by_currency):
            found.append("stored balances per currency differ from the entries")
        if self.duplicate_references:
            found.append("duplicate (ledger_id, reference_id) in ledger_entries")
        if self.missing_outbox:
            found.append(f"{self.missing_outbox} posted entries have no outbox row")
        if not all(t.matches for t in self.control_totals):
            found.append("source control totals differ from ledger + held rows")
        # Each of these has a blocking asset check (checks.py), so a report that does not
        # reconcile fails its run.
        return found

    @property
    def reconciles(self) -> bool:
        return not self.problems


def partition_accounts(
    conn: psycopg.Connection, source_id: str, rows_read: dict[str, int]
) -> list[PartitionAccount]:
    """Per partition of `rows_read` (rows the extract stage read): where its rows ended."""
    params = {"source_id": source_id, "partition_keys": sorted(rows_read)}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query("reconcile/partition_accounting"), params).fetchall()
    return [PartitionAccount(read=rows_read[r["partition_key"]], **r) for r in rows]


def reconcile(
    conn: psycopg.Connection,
    source_id: str,
    rows_read: dict[str, int],
    unpartitioned_rejects: int,
    source_totals: dict[str, tuple[int, Decimal]] | None = None,
    held_totals: dict[str, tuple[int, Decimal]] | None = None,
) -> Reconciliation:
    keys = sorted(rows_read)
    params = {"source_id": source_id, "partition_keys": keys}
    partitions = partition_accounts(conn, source_id, rows_read)
    with conn.cursor(row_factory=dict_row) as cur:
        verification = cur.execute(query("reconcile/entry_verification"), params).fetchone() or {}
        drift = cur.execute(query("reconcile/balance_drift")).fetchall()
        currency_totals = cur.execute(query("reconcile/currency_totals")).fetchall()
        by_currency = cur.execute(query("reconcile/balances_by_currency")).fetchall()
        outbox = cur.execute(query("dual_ledger/outbox_status"), params).fetchall()
        duplicates = cur.execute(query("reconcile/duplicate_references")).fetchall()
    controls = []
    if source_totals is not None:
        controls = control_totals(
            source_totals, ledger_totals(conn, source_id, keys), held_totals or {}
        )
    return Reconciliation(
        source_id=source_id,
        partitions=partitions,
        unpartitioned_rejects=unpartitioned_rejects,
        entry_verification=verification,
        balance_drift=drift,
        currency_totals=currency_totals,
        balances_by_currency=by_currency,
        outbox_status=outbox,
        duplicate_references=duplicates,
        control_totals=controls,
    )


def control_totals(
    source: dict[str, tuple[int, Decimal]],
    ledger: dict[str, tuple[int, Decimal]],
    held: dict[str, tuple[int, Decimal]],
) -> list[ControlTotal]:
    """Per currency: the source's valid rows against what the ledger posted plus what it held."""
    controls = []
    for currency in sorted(set(source) | set(ledger) | set(held)):
        s_count, s_sum = source.get(currency, (0, Decimal(0)))
        l_count, l_sum = ledger.get(currency, (0, Decimal(0)))
        h_count, h_sum = held.get(currency, (0, Decimal(0)))
        controls.append(ControlTotal(currency, s_count, s_sum, l_count, l_sum, h_count, h_sum))
    return controls


def ledger_totals(
    conn: psycopg.Connection, source_id: str, keys: list[str]
) -> dict[str, tuple[int, Decimal]]:
    """Count and sum per currency of what this source posted in these partitions (NUMERIC sums
    in PostgreSQL: exact at any size)."""
    rows = conn.execute(
        query("reconcile/ledger_control_totals"), {"source_id": source_id, "partition_keys": keys}
    ).fetchall()
    return {currency: (count, total) for currency, count, total in rows}


def held_totals(
    conn: psycopg.Connection, source_id: str, keys: list[str]
) -> dict[str, tuple[int, Decimal]]:
    """Count and sum per currency of the valid rows that were not posted (duplicates, conflicts)."""
    rows = conn.execute(
        query("reconcile/held_control_totals"), {"source_id": source_id, "partition_keys": keys}
    ).fetchall()
    return {currency: (count, total) for currency, count, total in rows}


CONTROL_TOTAL_FILES = 256  # partitions per aggregation: bounds memory on large days
CONTROL_TOTAL_SCHEMA = pa.schema([("currency_code", pa.string()), ("amount", pa.string())])
# Amounts as Arrow decimals wide enough for any the contract admits, and for any sum of them:
# at most MAX_INTEGER_DIGITS (24) before the point and 18 after (the most minor units a currency
# is allowed), so 2^63 rows of the largest amount sum to under 10^43, far below the 10^58 that
# 76 digits with 18 after the point hold. (decimal128(38, 18) held only 20 digits before the
# point: a 21-digit amount could not be cast, and ten of 99,999,999,999,999,999,999.99 wrapped
# around to a negative sum.) An amount with more digits fails the cast loudly, never rounds.
AMOUNT_SCALE = max(places_table().values())
AMOUNT_TYPE = pa.decimal256(76, AMOUNT_SCALE)


def source_control_totals(validated: Sequence[Path]) -> dict[str, tuple[int, Decimal]]:
    """Count and exact sum per currency of the valid source rows in these validated stage files.

    Reads only the two columns it needs, a few hundred partitions per Arrow aggregation, so
    memory stays bounded on large days (docs/performance.md)."""
    totals: dict[str, tuple[int, Decimal]] = {}
    for first in range(0, len(validated), CONTROL_TOTAL_FILES):
        tables = [
            # One file each: read as one, without the dataset layer `read_table` sets up per
            # call (a long daily history has thousands of them).
            pq.ParquetFile(path)
            .read(columns=["currency_code", "amount"])
            .cast(CONTROL_TOTAL_SCHEMA)
            for path in validated[first : first + CONTROL_TOTAL_FILES]
        ]
        table = pa.concat_tables(tables)
        if table.num_rows == 0:
            continue
        table = table.set_column(1, "amount", pc.cast(table["amount"], AMOUNT_TYPE))
        grouped = table.group_by("currency_code").aggregate(
            [("amount", "sum"), ("amount", "count")]
        )
        for currency, exact, count in zip(
            grouped["currency_code"].to_pylist(),
            grouped["amount_sum"].to_pylist(),
            grouped["amount_count"].to_pylist(),
            strict=True,
        ):
            before_count, before_total = totals.get(currency, (0, Decimal(0)))
            total = exact_sum(before_total, exact or Decimal(0))
            totals[currency] = (before_count + count, _plain(total))
    return totals


def _plain(value: Decimal) -> Decimal:
    """Drop the trailing zeros of the Arrow scale (19534940.598000… → 19534940.598), exactly
    (`normalize` in the default context would round to 28 digits)."""
    return Decimal(format(value.normalize(EXACT), "f"))


def reconcile_source(
    conn: psycopg.Connection,
    source_id: str,
    rows_read: dict[str, int],
    validated: Sequence[Path],
    keys: list[str],
) -> Reconciliation:
    """The reconciliation of a source's partitions `keys`, from what the extract stage read
    (`rows_read`), the validated stage files and the ledger."""
    unpartitioned = one_row(conn.execute(query("rejects/unpartitioned_count"), (source_id,)))[0]
    return reconcile(
        conn,
        source_id,
        rows_read,
        unpartitioned,
        source_totals=source_control_totals(validated),
        held_totals=held_totals(conn, source_id, keys),
    )
