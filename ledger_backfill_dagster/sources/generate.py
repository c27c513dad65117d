"""A deterministic generator of canonical ledger CSVs and their chart of accounts.

N entries over D days among K accounts in several currencies; the same arguments always give the
same bytes. Every entry debits and credits accounts of its own currency, so the generated ledger
must reconcile exactly. Like a real history, a customer account is only credited (its balance
lowered) while it holds enough: money comes in from the clearing accounts, which may go negative,
so the balance constraints apply cleanly after a generated backfill. Used by the demo, the tests
and the benchmarks.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ledger_backfill_dagster.entries.currencies import places
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS

CURRENCIES = ("USD", "EUR", "JPY", "GBP", "BHD")
TRANSACTION_TYPES = ("TRANSFER", "PAYMENT", "FEE", "INTEREST", "SETTLEMENT")


@dataclass(frozen=True)
class GeneratedData:
    entries_file: Path
    accounts_file: Path
    entries: int
    days: int
    start: date


def account_ids(accounts: int) -> list[tuple[str, str, bool]]:
    """(id, currency, allow_negative): a clearing account per currency, the rest customers."""
    result = [(f"CLR-{c}", c, True) for c in CURRENCIES]
    for i in range(max(accounts - len(result), len(CURRENCIES))):
        currency = CURRENCIES[i % len(CURRENCIES)]
        result.append((f"ACC-{i:06d}-{currency}", currency, False))
    return result


def generate(
    out_dir: Path,
    entries: int,
    days: int,
    accounts: int = 50,
    start: date = date(2024, 1, 1),
    seed: int = 42,
    prefix: str = "REF",
) -> GeneratedData:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    chart = account_ids(accounts)
    by_currency: dict[str, list[str]] = {}
    for account, currency, _ in chart:
        by_currency.setdefault(currency, []).append(account)

    accounts_file = out_dir / "accounts.csv"
    with accounts_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accountId", "currencyCode", "allowNegative"])
        for account, currency, negative in chart:
            writer.writerow([account, currency, "true" if negative else "false"])

    entries_file = out_dir / "ledger_export.csv"
    origin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    seconds_per_entry = days * 86400 / max(entries, 1)
    with entries_file.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CANONICAL_FIELDS)
        held: dict[str, int] = {}  # customer balances in minor units, to keep them >= 0
        for n in range(entries):
            currency = CURRENCIES[rng.randrange(len(CURRENCIES))]
            customers = by_currency[currency][1:]
            clearing = by_currency[currency][0]
            scale = places(currency)
            minor = rng.randrange(1, 10_000_000)
            payer = customers[rng.randrange(len(customers))]
            if len(customers) < 2 or rng.random() < 0.5 or held.get(payer, 0) < minor:
                payer = clearing  # a deposit from outside the ledger
            payee = customers[rng.randrange(len(customers))]
            while payee == payer:
                payee = customers[rng.randrange(len(customers))]
            if payer != clearing:
                held[payer] -= minor
            held[payee] = held.get(payee, 0) + minor
            debit, credit = payee, payer
            amount = f"{minor // 10**scale}.{minor % 10**scale:0{scale}d}" if scale else str(minor)
            when = origin + timedelta(seconds=int(n * seconds_per_entry))
            metadata = json.dumps({"batch": n // 1000, "note": "generated"}) if n % 10 == 0 else ""
            writer.writerow(
                [
                    "MASTER",
                    debit,
                    credit,
                    amount,
                    currency,
                    "fiat",
                    TRANSACTION_TYPES[n % len(TRANSACTION_TYPES)],
                    f"{prefix}-{n:09d}",
                    when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "",
                    metadata,
                ]
            )
    return GeneratedData(entries_file, accounts_file, entries, days, start)
