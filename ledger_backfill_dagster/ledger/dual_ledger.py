"""Dual-ledger verification (the seed's scenario 4, step 5, and its 6.3 queries).

Per partition, the SCB side's control totals (count and exact sum per currency, from its
control-totals endpoint) are compared with what our ledger holds of that day from the SCB source:
the entries it posted, plus the entries its rows repeated as exact duplicates. Every backfilled
entry without an outbox row is listed, and the outbox's sync status (PENDING / SENT / FAILED) is
counted. Everything is read from the ledger itself, so a hand-deleted outbox row or entry shows up
in the next check, whichever run made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from ledger_backfill_dagster.lib.sql_files import query

Totals = dict[str, tuple[int, Decimal]]  # currency → (count, sum)


@dataclass(frozen=True)
class CurrencyComparison:
    partition_key: str
    currency: str
    scb_count: int
    scb_sum: Decimal
    ledger_count: int
    ledger_sum: Decimal

    @property
    def matches(self) -> bool:
        return self.scb_count == self.ledger_count and self.scb_sum == self.ledger_sum


@dataclass(frozen=True)
class MissingOutbox:
    partition_key: str
    ledger_entry_id: int
    ledger_id: str
    reference_id: str


@dataclass
class DualLedgerReport:
    source_id: str
    partition_keys: list[str]
    comparisons: list[CurrencyComparison] = field(default_factory=list)
    missing_outbox: list[MissingOutbox] = field(default_factory=list)
    outbox_status: list[dict] = field(default_factory=list)
    control_totals_checked: bool = False

    @property
    def mismatches(self) -> list[CurrencyComparison]:
        return [c for c in self.comparisons if not c.matches]

    @property
    def gaps(self) -> int:
        return len(self.missing_outbox)

    @property
    def consistent(self) -> bool:
        return not self.mismatches and not self.missing_outbox

    def status_counts(self) -> dict[str, int]:
        return {row["status"]: int(row["count"]) for row in self.outbox_status}


def held_totals(
    conn: psycopg.Connection, source_id: str, partition_keys: list[str]
) -> dict[str, Totals]:
    """partition → currency → (count, sum) of what our ledger holds of the source's days."""
    held: dict[str, Totals] = {key: {} for key in partition_keys}
    for key, currency, count, total in conn.execute(
        query("dual_ledger/held_totals"),
        {"source_id": source_id, "partition_keys": partition_keys},
    ).fetchall():
        held[key][currency] = (int(count), Decimal(total))
    return held


def check_dual_ledger(
    conn: psycopg.Connection,
    source_id: str,
    partition_keys: list[str],
    scb_totals: dict[str, Totals] | None = None,
) -> DualLedgerReport:
    """Compare the SCB side's control totals (when given) and list outbox gaps, per partition."""
    keys = sorted(partition_keys)
    params = {"source_id": source_id, "partition_keys": keys}
    report = DualLedgerReport(source_id, keys, control_totals_checked=scb_totals is not None)
    if scb_totals is not None:
        ours = held_totals(conn, source_id, keys)
        for key in keys:
            theirs = scb_totals.get(key, {})
            for currency in sorted(set(theirs) | set(ours[key])):
                s_count, s_sum = theirs.get(currency, (0, Decimal(0)))
                l_count, l_sum = ours[key].get(currency, (0, Decimal(0)))
                report.comparisons.append(
                    CurrencyComparison(key, currency, s_count, s_sum, l_count, l_sum)
                )
    with conn.cursor(row_factory=dict_row) as cur:
        report.missing_outbox = [
            MissingOutbox(**row)
            for row in cur.execute(query("dual_ledger/missing_outbox"), params).fetchall()
        ]
        report.outbox_status = cur.execute(query("dual_ledger/outbox_status"), params).fetchall()
    return report
