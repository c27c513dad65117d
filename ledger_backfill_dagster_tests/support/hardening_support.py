"""What the hardening tests share: source files written as exports write them, and the real
`dagster asset materialize` command run on them in a subprocess."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.resources.settings import MonitoringSettings, SourceSettings
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.helpers import cli_materialize

DAY = "2024-01-01"


def entry(
    reference: str,
    debit: str,
    credit: str,
    amount: str,
    currency: str,
    *,
    metadata: str = "",
    when: str = f"{DAY}T10:00:00Z",
) -> dict[str, str]:
    """One canonical row (CANONICAL_FIELDS' names)."""
    return {
        "ledgerId": "MASTER",
        "debitAccountId": debit,
        "creditAccountId": credit,
        "amount": amount,
        "currencyCode": currency,
        "assetType": "fiat",
        "transactionType": "TRANSFER",
        "referenceId": reference,
        "timestampUtc": when,
        "fxRate": "",
        "metadata": metadata,
    }


def write_entries(
    path: Path, rows: Iterable[dict[str, str]], extra_columns: Sequence[str] = ()
) -> Path:
    """A canonical CSV; `extra_columns` are columns no layout names (folded into metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [*CANONICAL_FIELDS, *extra_columns], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_accounts(path: Path, accounts: dict[str, str]) -> Path:
    """accountId → currency, every account allowed to go negative."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["accountId", "currencyCode", "allowNegative"])
        writer.writerows([account, currency, "true"] for account, currency in accounts.items())
    return path


class Cli:
    """`dagster asset materialize --select '*'` on this test's source, database and state, as a
    user runs it (its own Dagster instance under tmp_path)."""

    def __init__(
        self,
        tmp_path: Path,
        backfill_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        source: Path,
        accounts: Path,
    ) -> None:
        home = dagster_home(tmp_path)
        settings = {"BACKFILL_SOURCE_FILE": str(source), "ACCOUNTS_FILE": str(accounts)}
        for key, value in settings.items():
            monkeypatch.setenv(key, value)  # so this process finds the same reports folder
        self.env = {**backfill_env, **settings, "DAGSTER_HOME": str(home)}

    def materialize(self, first: str = DAY, last: str = DAY) -> subprocess.CompletedProcess:
        return cli_materialize(first, last, self.env)

    @property
    def reports(self) -> Path:
        """This source's reports folder."""
        source = SourceSettings.from_env().reader()
        return MonitoringSettings.from_env().reports_path / source.source_key


def ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
