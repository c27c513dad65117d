"""The ledger's asset checks: evaluated in a normal materialization, passing on a clean backfill,
failing (and blocking the run) on each hand-made inconsistency, which the report shows too."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ledger_backfill_dagster.defs.backfill.checks import LEDGER_CHECKS
from ledger_backfill_dagster.defs.backfill.reconcile import reconciliation_report
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.support.helpers import (
    BackfillRunner,
    check_evaluations,
    use_source_files,
)

CHECK_NAMES = {
    "debits_equal_credits",
    "balances_match_entries",
    "no_duplicate_references",
    "source_rows_accounted_for",
    "outbox_coverage",
    "control_totals_match",
}


@pytest.fixture
def backfill_source(tmp_path: Path, backfill_env, monkeypatch) -> None:
    """Three days of generated data, for `backfill`: real in-process runs of the whole backfill
    with its checks, sharing one Dagster instance."""
    data = generate(tmp_path / "data", entries=600, days=3, accounts=20, start=date(2024, 1, 1))
    use_source_files(monkeypatch, data.entries_file, data.accounts_file)


def report_of(result: dg.ExecuteInProcessResult) -> tuple[bool, str]:
    # One materialization per partition of the range, all with the same whole-range report.
    m = result.asset_materializations_for_node("reconciliation_report")[-1]
    return m.metadata["reconciles"].value, m.metadata["report"].value


def test_the_backfill_job_evaluates_every_ledger_check() -> None:
    from ledger_backfill_dagster.definitions import defs

    job = defs.resolve_job_def("ledger_backfill_job")
    in_job = {key.name for key in job.asset_layer.asset_graph.asset_check_keys}
    assert CHECK_NAMES <= in_job
    assert {c.check_key.name for c in LEDGER_CHECKS} == CHECK_NAMES
    assert all(spec.blocking for c in LEDGER_CHECKS for spec in c.check_specs)


def test_checks_pass_on_a_clean_backfill_and_catch_hand_made_inconsistencies(
    backfill: BackfillRunner, database_url: str
) -> None:
    clean = backfill("2024-01-01", "2024-01-03")
    assert clean.success
    # the ledger's checks, and the reject guard's on validated_entries
    assert check_evaluations(clean) == dict.fromkeys(CHECK_NAMES | {"rejects_within_guard"}, True)
    assert report_of(clean)[0] is True

    def report_again() -> dg.ExecuteInProcessResult:
        """The report and its checks again, upstream unchanged, as in any later run."""
        result = backfill("2024-01-01", "2024-01-03", assets=[reconciliation_report.key])
        assert set(check_evaluations(result)) == CHECK_NAMES  # the selection brings its checks
        return result

    with psycopg.connect(database_url, autocommit=True) as conn:
        # 1. A balance nudged by one cent.
        account = conn.execute(
            "SELECT debit_account_id FROM ledger_entries ORDER BY id LIMIT 1"
        ).fetchone()[0]
        conn.execute(
            "UPDATE bank_accounts SET balance = balance + 0.01,"
            " available_balance = available_balance + 0.01 WHERE id = %s",
            (account,),
        )
        result = report_again()
        assert not result.success  # blocking checks fail the run
        checks = check_evaluations(result)
        assert checks["balances_match_entries"] is False
        assert checks["debits_equal_credits"] is False  # stored balances per currency are off
        assert checks["source_rows_accounted_for"] and checks["outbox_coverage"]
        reconciles, markdown = report_of(result)
        assert reconciles is False and account in markdown and "-0.01" in markdown
        conn.execute(
            "UPDATE bank_accounts SET balance = balance - 0.01,"
            " available_balance = available_balance - 0.01 WHERE id = %s",
            (account,),
        )

        # 2. An outbox row removed.
        entry_id, ledger_id, reference = conn.execute(
            "SELECT id, ledger_id, reference_id FROM ledger_entries ORDER BY id LIMIT 1 OFFSET 5"
        ).fetchone()
        conn.execute("DELETE FROM dual_ledger_outbox WHERE ledger_entry_id = %s", (entry_id,))
        result = report_again()
        assert not result.success
        checks = check_evaluations(result)
        assert checks == {**dict.fromkeys(CHECK_NAMES, True), "outbox_coverage": False}
        reconciles, markdown = report_of(result)
        assert reconciles is False and "1 posted entries have no outbox row" in markdown
        conn.execute(
            "INSERT INTO dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id)"
            " VALUES (%s, %s, %s)",
            (entry_id, ledger_id, reference),
        )
        assert report_again().success  # repaired: everything passes again

        # 3. An entry deleted (its outbox row left behind, as a careless DELETE would).
        partition = conn.execute(
            "DELETE FROM ledger_entries WHERE id = %s RETURNING backfill_partition", (entry_id,)
        ).fetchone()[0]
        result = report_again()
        assert not result.success
        checks = check_evaluations(result)
        assert checks["balances_match_entries"] is False
        assert checks["source_rows_accounted_for"] is False
        assert checks["outbox_coverage"] is False  # the orphaned outbox row
        assert checks["no_duplicate_references"] is True
        reconciles, markdown = report_of(result)
        assert reconciles is False
        assert f"rows unaccounted for in {partition} (+1)" in markdown
