"""1. The seed's row-by-row path: the baseline every other figure is divided by."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from benchmarks.common import (
    Dataset,
    Server,
    check_text,
    first_rows,
    fmt_rate,
    ledger_check,
    prepare_ledger,
    rate,
    say,
)

# The seed's call, as its script made it (the function is installed by the migrations).
SEED_CALL = (
    "SELECT post_ledger_entry(%s::TEXT, %s::TEXT, %s::TEXT, %s::NUMERIC, %s::TEXT, %s::TEXT,"
    " %s::TEXT, %s::TEXT, %s::NUMERIC, %s::JSONB, %s::TIMESTAMPTZ)"
)


def seed_arguments(r: dict[str, str]) -> tuple[str | None, ...]:
    """One source record as the seed's script passed it (its defaults for empty fields)."""
    return (
        r["ledgerId"] or "MASTER",
        r["debitAccountId"],
        r["creditAccountId"],
        r["amount"],
        r["currencyCode"],
        r["assetType"] or "fiat",
        r["transactionType"],
        r["referenceId"],
        r["fxRate"] or None,
        r["metadata"] or None,
        r["timestampUtc"],
    )


def bench_row_by_row(server: Server, data: Dataset, sample: int) -> dict[str, Any]:
    """The seed's script: for each record, `SELECT post_ledger_entry(...)` in its own transaction;
    a duplicate reference (23505) is skipped, as with SKIP_DUPLICATES=true."""
    rows = first_rows(data.entries_file, sample)
    with server.database("rowbyrow") as url:
        prepare_ledger(url, data.accounts_file)
        failed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            for r in rows:
                try:
                    conn.execute(SEED_CALL, seed_arguments(r))
                except psycopg.errors.UniqueViolation:
                    failed += 1
            seconds = time.perf_counter() - t0
        check = ledger_check(url)
    result = {
        "entries": len(rows),
        "seconds": seconds,
        "rate": rate(len(rows), seconds),
        "skipped": failed,
        "check": check,
    }
    say(
        f"  {len(rows):,} entries in {seconds:.2f} s = {fmt_rate(result['rate'])}"
        f"  [{check_text(check)}]"
    )
    return result
