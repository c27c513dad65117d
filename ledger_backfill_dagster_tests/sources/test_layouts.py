"""Column layouts, mappings, defaults and FX through real Dagster runs: one folder source holds a
canonical file, a legacy export and a file read through COLUMN_MAP_FILE; every row is posted with
the values its rules give, FX credit sides move balances exactly, and re-running files whose
rows carry no reference id posts nothing new."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    ledger_snapshot,
    materialize_range,
)

ACCOUNTS = {"U1": "USD", "U2": "USD", "E1": "EUR", "E2": "EUR", "J1": "JPY", "B1": "BHD"}
PLACES = {"USD": 2, "EUR": 2, "JPY": 0, "BHD": 3}
LEGACY_HEADER = [
    "ledger", "debit_account", "credit_account", "amount", "currency", "asset_type", "txn_type",
    "reference_id", "timestamp", "fx_rate", "branch", "memo",
]  # fmt: skip
COLUMN_MAP = {
    "From": "debitAccountId",
    "To": "creditAccountId",
    "Value": "amount",
    "Ccy": "currencyCode",
    "When": "timestampUtc",
    "Ref": "referenceId",
    "Kind": "transactionType",
    "Rate": "fxRate",
}

CANONICAL_ROWS = [
    # ledgerId, debit, credit, amount, currency, assetType, type, reference, timestamp, fx, metadata
    ["", "U1", "U2", "100.00", "USD", "fiat", "PAYMENT", "CAN-1", "2024-01-01T09:00:00Z", "", ""],
    ["SOVEREIGN", "SRC-U2", "U1", "0.01", "USD", "", "xfer", "CAN-2", "2024-01-01T10:00:00Z", "", '{"k": [1, 2]}'],
    ["", "E1", "J1", "10.05", "EUR", "fiat", "FX", "CAN-FX1", "2024-01-01T11:00:00Z", "162.3456", ""],
    ["", "E1", "J1", "1.00", "EUR", "fiat", "FX", "CAN-FX2", "2024-01-02T11:00:00Z", "2.5", ""],
    ["", "U1", "B1", "2.00", "USD", "fiat", "FX", "CAN-FX3", "2024-01-02T12:00:00Z", "0.37705", ""],
]  # fmt: skip
LEGACY_ROWS = [
    ["", "U2", "U1", "25.50", "usd", "", "pmt", "", "2024-01-01T12:00:00Z", "", "NYC", "rent"],
    ["MASTER", "E2", "J1", "3.00", "EUR", "fiat", "FX", "", "2024-01-02T08:00:00Z", "2.5", "LDN", ""],
    ["", "LEGACY-U1", "U2", "7", "USD", "cbdc", "xfer", "", "2024-01-02T09:30:00+01:00", "", "", "x,y"],
    ["", "U1", "U2", "1.10", "USD", "fiat", "FEE", "LEG-REF", "2024-01-01T13:00:00Z", "", "NYC", ""],
]  # fmt: skip
DECLARED_HEADER = ["When", "From", "To", "Value", "Ccy", "Ref", "Kind", "Rate", "Notes"]
DECLARED_ROWS = [
    ["2024-01-01T14:00:00Z", "B1", "E2", "1.234", "BHD", "DEC-1", "FX", "2.4321", "first"],
    ["2024-01-02T14:00:00Z", "U2", "U1", "3.30", "USD", "", "PAYMENT", "", ""],
]  # fmt: skip


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)


def _expected_entries() -> list[dict]:
    """What each source row must become, worked out here independently of the pipeline."""
    account = {"SRC-U2": "U2", "LEGACY-U1": "U1"}
    kind = {"xfer": "TRANSFER", "pmt": "PAYMENT"}
    out = []
    for r in CANONICAL_ROWS:
        out.append(dict(zip(CANONICAL_FIELDS, r, strict=True)))
    for r in LEGACY_ROWS:
        extras = {"branch": r[10], "memo": r[11]}
        out.append(dict(zip(CANONICAL_FIELDS, [*r[:10], json.dumps(extras)], strict=True)))
    for r in DECLARED_ROWS:
        row = dict(zip(DECLARED_HEADER, r, strict=True))
        out.append(
            {COLUMN_MAP.get(k, k): v for k, v in row.items() if k != "Notes"}
            | {"ledgerId": "", "assetType": "", "metadata": json.dumps({"Notes": row["Notes"]})}
        )
    for e in out:
        e["ledgerId"] = e["ledgerId"] or "LAYOUTS"
        e["debitAccountId"] = account.get(e["debitAccountId"], e["debitAccountId"])
        e["creditAccountId"] = account.get(e["creditAccountId"], e["creditAccountId"])
        e["transactionType"] = kind.get(e["transactionType"], e["transactionType"])
        e["assetType"] = e["assetType"] or "fiat"
        e["currencyCode"] = e["currencyCode"].upper()
        amount = Decimal(e["amount"])
        credit_currency = ACCOUNTS[e["creditAccountId"]]
        credit = amount
        if e["fxRate"]:
            quantum = Decimal(1).scaleb(-PLACES[credit_currency])
            credit = (amount * Decimal(e["fxRate"])).quantize(quantum, rounding=ROUND_HALF_EVEN)
        e["credit"] = credit
    return out


@pytest.fixture
def layouts_env(tmp_path: Path, backfill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    source = tmp_path / "exports"
    source.mkdir()
    _write(source / "a_canonical.csv", list(CANONICAL_FIELDS), CANONICAL_ROWS)
    _write(source / "b_legacy.csv", LEGACY_HEADER, LEGACY_ROWS)
    _write(source / "c_declared.csv", DECLARED_HEADER, DECLARED_ROWS)
    (tmp_path / "columns.json").write_text(json.dumps(COLUMN_MAP))
    (tmp_path / "accounts.csv").write_text(
        "accountId,currencyCode,allowNegative\n"
        + "".join(f"{a},{c},true\n" for a, c in ACCOUNTS.items())
    )
    (tmp_path / "accounts_map.csv").write_text("sourceId,ledgerId\nSRC-U2,U2\nLEGACY-U1,U1\n")
    (tmp_path / "types_map.csv").write_text("sourceType,ledgerType\nxfer,TRANSFER\npmt,PAYMENT\n")
    settings = {
        "BACKFILL_SOURCE_FILE": str(source),
        "ACCOUNTS_FILE": str(tmp_path / "accounts.csv"),
        "ACCOUNT_MAP_FILE": str(tmp_path / "accounts_map.csv"),
        "TRANSACTION_TYPE_MAP_FILE": str(tmp_path / "types_map.csv"),
        "COLUMN_MAP_FILE": str(tmp_path / "columns.json"),
        "LEDGER_ID": "LAYOUTS",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return source


def test_layouts_mappings_fx_and_reruns(
    layouts_env: Path, tmp_path: Path, monkeypatch, database_url
):
    result = materialize_range("2024-01-01", "2024-01-02")
    assert result.success
    layouts = result.asset_materializations_for_node("extracted_source")[0].metadata["layouts"]
    assert all(name in layouts.value for name in ("'canonical'", "'legacy'", "'declared'"))

    expected = _expected_entries()
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        entries = cur.execute("SELECT * FROM ledger_entries ORDER BY source_row_id").fetchall()
        assert conn.execute("SELECT count(*) FROM ledger_backfill_rejects").fetchone()[0] == 0
        assert len(entries) == len(expected)
        for entry, want in zip(entries, expected, strict=True):
            assert entry["ledger_id"] == want["ledgerId"]
            assert entry["debit_account_id"] == want["debitAccountId"]
            assert entry["credit_account_id"] == want["creditAccountId"]
            assert entry["transaction_type"] == want["transactionType"]
            assert entry["asset_type"] == want["assetType"]
            assert entry["currency_code"] == want["currencyCode"]
            assert entry["amount"] == Decimal(want["amount"])
            assert entry["credit_amount"] == want["credit"]
            assert entry["credit_currency_code"] == ACCOUNTS[want["creditAccountId"]]
            assert entry["metadata"] == (json.loads(want["metadata"]) if want["metadata"] else None)
            if want["referenceId"]:
                assert entry["reference_id"] == want["referenceId"]
            else:
                assert entry["reference_id"].startswith("BACKFILL-")
        by_ref = {e["reference_id"]: e for e in entries}
        assert by_ref["CAN-FX1"]["credit_amount"] == Decimal("1632")  # 1631.57328 → 1632
        assert by_ref["CAN-FX2"]["credit_amount"] == Decimal("2")  # 2.5 → 2, half-even
        assert by_ref["CAN-FX3"]["credit_amount"] == Decimal("0.754")  # 0.75410 → 0.754
        assert by_ref["DEC-1"]["credit_amount"] == Decimal("3.00")  # 3.0012114 EUR

        balances: dict[str, Decimal] = defaultdict(Decimal)
        for want in expected:
            balances[want["debitAccountId"]] += Decimal(want["amount"])
            balances[want["creditAccountId"]] -= want["credit"]
        stored = dict(conn.execute("SELECT id, balance FROM bank_accounts").fetchall())
        assert stored == {a: balances.get(a, Decimal(0)) for a in ACCOUNTS}
        assert stored["J1"] == Decimal("-1642")  # 1632 + 2 + 8
        assert_ledger_invariants(conn)
        before = ledger_snapshot(conn)

    # The same files again, every partition redone: nothing new, nothing called a duplicate.
    monkeypatch.setenv("FORCE_REDO", "true")
    assert materialize_range("2024-01-01", "2024-01-02").success
    with psycopg.connect(database_url) as conn:
        assert ledger_snapshot(conn) == before

    # The same rows in another export (another source): shuffled, cosmetically different, no
    # reference ids where there were none. Generated ids match, so every row is a duplicate.
    copy = tmp_path / "exports_again"
    shutil.copytree(layouts_env, copy)
    rows = [list(r) for r in LEGACY_ROWS]
    random.Random(4).shuffle(rows)
    for r in rows:
        r[1] = f" {r[1]} "
        r[3] = r[3].rstrip("0").rstrip(".") if "." in r[3] else r[3] + ".0"
        r[4] = r[4].lower()
    _write(copy / "b_legacy.csv", LEGACY_HEADER, rows)
    monkeypatch.setenv("BACKFILL_SOURCE_FILE", str(copy))
    rerun = materialize_range("2024-01-01", "2024-01-02")
    assert rerun.success
    with psycopg.connect(database_url) as conn:
        after = ledger_snapshot(conn)
        assert after["entries"] == before["entries"] and after["balances"] == before["balances"]
        assert after["duplicates"] == len(expected) and after["conflicts"] == 0
        assert_ledger_invariants(conn)
    report = rerun.asset_materializations_for_node("reconciliation_report")[0].metadata
    assert report["posted"].value == 0
    assert report["duplicates"].value == report["rows_read"].value == len(expected)
    assert report["reconciles"].value
