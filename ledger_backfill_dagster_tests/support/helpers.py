"""Shared test helpers: run real backfills, and assert the ledger's invariants."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.definitions import build_definitions
from ledger_backfill_dagster.defs.backfill.checks import LEDGER_CHECKS
from ledger_backfill_dagster.defs.backfill.extract import extracted_source
from ledger_backfill_dagster.defs.backfill.guards import GUARD_CHECKS
from ledger_backfill_dagster.defs.backfill.post import posted_batches
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.defs.backfill.transform import transformed_entries
from ledger_backfill_dagster.defs.backfill.validate import validated_entries
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster_tests.support import cli

ASSETS = [
    extracted_source,
    transformed_entries,
    validated_entries,
    posted_batches,
    reconciliation_report,
]


def backfill_job(
    name: str, assets: list[dg.AssetsDefinition | dg.AssetKey] | None = None, **resources: object
) -> dg.JobDefinition:
    """A job of `assets` (default: all five stages) in the code location's own definitions:
    settings from the current environment, like the CLI, and the ledger database by its literal
    DATABASE_URL, unless `resources` give others. The ledger invariants are evaluated in every
    run that materializes the report. (`execute_in_process` runs in process whatever the code
    location's executor.)"""
    selected = assets or ASSETS
    selection = dg.AssetSelection.assets(*selected).without_checks()
    if {reconciliation_report, reconciliation_report.key} & set(selected):
        selection = selection | dg.AssetSelection.checks(*LEDGER_CHECKS)
    if {validated_entries, validated_entries.key} & set(selected):
        selection = selection | dg.AssetSelection.checks(*GUARD_CHECKS)
    job = dg.define_asset_job(name, selection=selection)
    defs = build_definitions(
        resources={"ledger_db": LedgerDatabase(database_url=os.environ["DATABASE_URL"])}
        | resources,
        jobs=[job],
    )
    return defs.resolve_job_def(name)


def range_tags(first: str, last: str) -> dict[str, str]:
    """The run tags of a single-run backfill of the partitions first...last."""
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


def materialize_range(
    first: str,
    last: str,
    *,
    raise_on_error: bool = True,
    assets: list | None = None,
    tags: dict[str, str] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """A real in-process materialization of the partition range, as a single-run backfill,
    configured from the current environment (like the CLI), with any further run `tags`, on
    `instance` (default: a fresh test instance)."""
    job = backfill_job("test_backfill", assets)
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(dg.instance_for_test())
        return job.execute_in_process(
            instance=instance,
            tags={**range_tags(first, last), **(tags or {})},
            raise_on_error=raise_on_error,
        )


def cli_materialize(
    first: str, last: str, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess:
    """`dagster asset materialize` of every asset over first...last in a subprocess, as a user
    runs it, with `env` over this process's environment."""
    return cli.run(
        cli.materialize_command(*cli.partition_range(first, last)),
        {**os.environ, **env},
        timeout=timeout,
    )


def use_source_files(
    monkeypatch: pytest.MonkeyPatch, entries: Path, accounts: Path, **settings: str
) -> None:
    """This test's in-process backfills read the CSV `entries` with the chart of accounts
    `accounts`, and any further `settings` (environment variables), from the environment."""
    monkeypatch.setenv("BACKFILL_SOURCE_FILE", str(entries))
    monkeypatch.setenv("ACCOUNTS_FILE", str(accounts))
    for key, value in settings.items():
        monkeypatch.setenv(key, value)


def use_settings(
    monkeypatch: pytest.MonkeyPatch, backfill_env: dict[str, str], settings: dict[str, str]
) -> dict[str, str]:
    """`settings` for this test's backfills both in process (the environment) and in subprocesses
    (added to `backfill_env`, which is returned)."""
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    backfill_env.update(settings)
    return backfill_env


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


def write_deposit_dataset(
    out_dir: Path, days: int, per_day: int, start: str = "2024-01-01", seed: int = 7
) -> tuple[Path, Path]:
    """A ledger whose customer accounts never go below zero, whatever subset of days is posted:
    customers only receive (deposits, some converted from EUR at an FX rate, so credit_amount
    differs from amount), and fees move between accounts that may go negative. Each day also
    holds one exact repeat (a duplicate) and one row breaking the contract (a reject).
    Returns (entries CSV, accounts CSV)."""
    import json
    import random
    from datetime import date, timedelta

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    accounts = [("CLR-USD", "USD", "true"), ("CLR-EUR", "EUR", "true"), ("FEE-USD", "USD", "true")]
    accounts += [(f"CUST-USD-{i}", "USD", "false") for i in range(6)]
    accounts += [(f"CUST-EUR-{i}", "EUR", "false") for i in range(4)]
    accounts_file = out_dir / "accounts.csv"
    with accounts_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accountId", "currencyCode", "allowNegative"])
        writer.writerows(accounts)
    entries_file = out_dir / "entries.csv"
    first = date.fromisoformat(start)
    with entries_file.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CANONICAL_FIELDS)
        for d in range(days):
            day = first + timedelta(days=d)
            rows = []
            for n in range(per_day):
                when = (
                    f"{day.isoformat()}T{(n * 86399 // per_day) // 3600:02d}:"
                    f"{(n * 86399 // per_day) % 3600 // 60:02d}:{(n * 86399 // per_day) % 60:02d}Z"
                )
                cents = rng.randrange(1, 5_000_000)
                amount = f"{cents // 100}.{cents % 100:02d}"
                ref = f"DEP-{day.isoformat()}-{n:05d}"
                kind = n % 4
                if kind == 0:  # USD customer funded from EUR clearing at a rate
                    rate = f"0.{rng.randrange(8000, 9999)}{rng.randrange(10, 99)}"
                    row = [
                        "MASTER",
                        f"CUST-USD-{rng.randrange(6)}",
                        "CLR-EUR",
                        amount,
                        "USD",
                        "fiat",
                        "DEPOSIT",
                        ref,
                        when,
                        rate,
                        "",
                    ]
                elif kind == 1:
                    row = [
                        "MASTER",
                        f"CUST-EUR-{rng.randrange(4)}",
                        "CLR-EUR",
                        amount,
                        "EUR",
                        "fiat",
                        "DEPOSIT",
                        ref,
                        when,
                        "",
                        json.dumps({"n": n}),
                    ]
                elif kind == 2:
                    row = [
                        "MASTER",
                        f"CUST-USD-{rng.randrange(6)}",
                        "CLR-USD",
                        amount,
                        "USD",
                        "fiat",
                        "DEPOSIT",
                        ref,
                        when,
                        "",
                        "",
                    ]
                else:
                    row = [
                        "MASTER",
                        "CLR-USD",
                        "FEE-USD",
                        amount,
                        "USD",
                        "fiat",
                        "FEE",
                        ref,
                        when,
                        "",
                        "",
                    ]
                rows.append(row)
            rows.append(list(rows[1]))  # an exact repeat: a duplicate
            bad = list(rows[2])
            bad[3], bad[7] = "12.3.4", f"BAD-{day.isoformat()}"
            rows.append(bad)  # breaks the contract: a reject
            writer.writerows(rows)
    return entries_file, accounts_file


def run_maintenance_job(
    job_name: str, database_url: str, op_config: dict, *, raise_on_error: bool = False
) -> dg.ExecuteInProcessResult:
    """A real in-process run of a maintenance job (maintenance_jobs.py) on this database."""
    from ledger_backfill_dagster.defs.maintenance.jobs import MAINTENANCE_JOBS

    job = next(j for j in MAINTENANCE_JOBS if j.name == job_name)
    [op] = job.graph.node_defs
    return job.execute_in_process(  # on an ephemeral (in-memory) Dagster instance
        run_config={"ops": {op.name: {"config": op_config}}},
        resources={"ledger_db": LedgerDatabase(database_url=database_url)},
        raise_on_error=raise_on_error,
    )


def op_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    """The metadata a maintenance job's op reported, as plain values."""
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}


class BackfillRunner:
    """Real in-process backfill runs (all five assets and the ledger checks) configured from the
    environment, sharing one Dagster instance: cheaper than materialize_range's one per run."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.job = backfill_job("backfill")
        # A run of some assets is a job of its own: `execute_in_process(asset_selection=...)`
        # would bring every check of the code location on them, not the ledger's alone.
        self.jobs: dict[tuple[dg.AssetKey, ...], dg.JobDefinition] = {}

    def __call__(
        self,
        first: str,
        last: str | None = None,
        assets: list[dg.AssetKey] | None = None,
        raise_on_error: bool = False,
    ) -> dg.ExecuteInProcessResult:
        job = self.job
        if assets:
            key = tuple(sorted(assets, key=dg.AssetKey.to_user_string))
            if key not in self.jobs:
                self.jobs[key] = backfill_job("backfill", list(key))
            job = self.jobs[key]
        return job.execute_in_process(
            instance=self.instance,
            tags=range_tags(first, last or first),
            raise_on_error=raise_on_error,
        )


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Everything Dagster recorded about the failed steps: event message, error, description."""
    parts = []
    for event in result.get_step_failure_events():
        parts.append(event.message or "")
        data = event.step_failure_data
        if data.error is not None:
            parts.append(data.error.to_string())
        if data.user_failure_data is not None:
            parts.append(data.user_failure_data.description or "")
    return "\n".join(parts)


def all_event_text(result: dg.ExecuteInProcessResult) -> str:
    """Every event of the run as its log shows it: message and data."""
    return "\n".join(f"{e.message} {e.event_specific_data!r}" for e in result.all_events)


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
