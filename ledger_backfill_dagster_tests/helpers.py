"""Shared test helpers: run real backfills, and assert the ledger's invariants."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg

from ledger_backfill_dagster.assets.extract import extracted_source
from ledger_backfill_dagster.assets.post import posted_batches
from ledger_backfill_dagster.assets.reconcile import reconciliation_report
from ledger_backfill_dagster.assets.transform import transformed_entries
from ledger_backfill_dagster.assets.validate import validated_entries
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.settings import BackfillSettings

ASSETS = [
    extracted_source,
    transformed_entries,
    validated_entries,
    posted_batches,
    reconciliation_report,
]
REPO = Path(__file__).resolve().parents[1]


def materialize_range(
    first: str, last: str, *, raise_on_error: bool = True, assets: list | None = None
) -> dg.ExecuteInProcessResult:
    """A real in-process materialization of the partition range, as a single-run backfill,
    configured from the current environment (like the CLI)."""
    job = dg.Definitions(
        assets=assets or ASSETS,
        resources={
            "settings": BackfillSettings.from_env(),
            "ledger_db": LedgerDatabase(database_url=os.environ["DATABASE_URL"]),
        },
        jobs=[dg.define_asset_job("test_backfill", selection=dg.AssetSelection.all())],
        executor=dg.in_process_executor,
    ).resolve_job_def("test_backfill")
    with dg.instance_for_test() as instance:
        return job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            },
            raise_on_error=raise_on_error,
        )


def cli_materialize(
    first: str, last: str, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess:
    """`dagster asset materialize` in a subprocess, as a user runs it."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ledger_backfill_dagster.definitions",
            "--select",
            "*",
            "--partition-range",
            f"{first}...{last}",
        ],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def expected_balances(entries_csv: Path) -> dict[str, Decimal]:
    """Balances computed independently from a canonical CSV with exact Decimal arithmetic."""
    balances: dict[str, Decimal] = defaultdict(Decimal)
    with entries_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            amount = Decimal(row["amount"])
            balances[row["debitAccountId"]] += amount
            balances[row["creditAccountId"]] -= amount
    return dict(balances)


def assert_ledger_invariants(conn: psycopg.Connection) -> None:
    """Every balance equals the sum of its entries; per ledger and currency debits equal credits
    (net of FX); no duplicate reference; every entry has exactly one outbox row."""
    drift = conn.execute(
        """
        WITH m AS (SELECT debit_account_id a, amount d FROM ledger_entries
                   UNION ALL SELECT credit_account_id, -credit_amount FROM ledger_entries),
             x AS (SELECT a, sum(d) s FROM m GROUP BY a)
        SELECT b.id, b.balance, coalesce(x.s, 0) FROM bank_accounts b LEFT JOIN x ON x.a = b.id
         WHERE b.balance <> coalesce(x.s, 0) OR b.available_balance <> b.balance - b.reserved_balance
        """
    ).fetchall()
    assert drift == [], f"balances differ from their entries: {drift[:5]}"
    unbalanced = conn.execute(
        """
        SELECT ledger_id, currency_code, sum(amount), sum(credit_amount) FROM ledger_entries
         WHERE currency_code = credit_currency_code
         GROUP BY 1, 2 HAVING sum(amount) <> sum(credit_amount)
        """
    ).fetchall()
    assert unbalanced == [], f"debits differ from credits: {unbalanced}"
    per_currency = conn.execute(
        """
        WITH s AS (SELECT currency_code c, amount d FROM ledger_entries
                   UNION ALL SELECT credit_currency_code, -credit_amount FROM ledger_entries
                   UNION ALL SELECT currency_code, -balance FROM bank_accounts)
        SELECT c, sum(d) FROM s GROUP BY c HAVING sum(d) <> 0
        """
    ).fetchall()
    assert per_currency == [], f"stored balances per currency differ from entries: {per_currency}"
    dupes = conn.execute(
        "SELECT ledger_id, reference_id FROM ledger_entries GROUP BY 1, 2 HAVING count(*) > 1"
    ).fetchall()
    assert dupes == []
    outbox = conn.execute(
        """
        SELECT count(*) FROM ledger_entries e
         WHERE (SELECT count(*) FROM dual_ledger_outbox o WHERE o.ledger_entry_id = e.id) <> 1
        """
    ).fetchone()[0]
    assert outbox == 0, f"{outbox} entries without exactly one outbox row"


def ledger_snapshot(conn: psycopg.Connection) -> dict[str, object]:
    return {
        "entries": conn.execute(
            "SELECT ledger_id, reference_id, amount, credit_amount, debit_account_id, credit_account_id,"
            " content_fingerprint FROM ledger_entries ORDER BY 1, 2"
        ).fetchall(),
        "balances": conn.execute(
            "SELECT id, balance, available_balance, reserved_balance FROM bank_accounts ORDER BY id"
        ).fetchall(),
        "outbox": conn.execute("SELECT count(*) FROM dual_ledger_outbox").fetchone()[0],
        "rejects": conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0],
        "duplicates": conn.execute("SELECT count(*) FROM ledger_backfill_duplicates").fetchone()[0],
        "conflicts": conn.execute("SELECT count(*) FROM ledger_backfill_conflicts").fetchone()[0],
    }


def balances(conn: psycopg.Connection) -> dict[str, Decimal]:
    return dict(conn.execute("SELECT id, balance FROM bank_accounts").fetchall())
