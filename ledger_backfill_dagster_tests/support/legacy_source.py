"""The legacy system a DATABASE source reads (its `ledger_entries_legacy` table, in the test's
`source_url` database), and the settings that point this test's backfills at it."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ledger_backfill_dagster_tests.support.helpers import use_settings

# The columns the amount tests vary are placeholders: the amount's DDL (name and type) and
# the fx rate's type.
LEGACY_TABLE = """
CREATE TABLE ledger_entries_legacy (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger_id          TEXT,
    debit_account_id   TEXT,
    credit_account_id  TEXT,
    {amount_column},
    currency_code      TEXT,
    asset_type         TEXT,
    transaction_type   TEXT,
    reference_id       TEXT,
    timestamp_utc      TIMESTAMPTZ,
    fx_rate            {fx_rate_type},
    metadata           JSONB
);
CREATE INDEX ledger_entries_legacy_ts ON ledger_entries_legacy (timestamp_utc);
"""
LEGACY_DDL = LEGACY_TABLE.format(amount_column="amount NUMERIC", fx_rate_type="NUMERIC")
COPY_LEGACY = (
    "COPY ledger_entries_legacy (ledger_id, debit_account_id, credit_account_id, amount,"
    " currency_code, asset_type, transaction_type, reference_id, timestamp_utc, fx_rate, metadata)"
    " FROM STDIN (FORMAT csv, HEADER true)"
)


def load_legacy(url: str, entries_csv: Path) -> int:
    """The legacy table filled with a canonical CSV's rows; returns how many it holds."""
    with psycopg.connect(url) as conn:
        conn.execute(LEGACY_DDL)
        with conn.cursor().copy(COPY_LEGACY) as copy:
            copy.write(entries_csv.read_bytes())
        conn.execute("ANALYZE ledger_entries_legacy")
        return conn.execute("SELECT count(*) FROM ledger_entries_legacy").fetchone()[0]


def use_database_source(
    monkeypatch: pytest.MonkeyPatch, backfill_env: dict[str, str], settings: dict[str, str]
) -> dict[str, str]:
    """A DATABASE source (`settings`: its URL, table, page size ...) for this test's backfills,
    in process and in `backfill_env` (returned), inheriting no query, column map or API token."""
    for key in ("BACKFILL_SOURCE_QUERY", "BACKFILL_SOURCE_COLUMN_MAP", "BACKFILL_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return use_settings(monkeypatch, backfill_env, {"BACKFILL_SOURCE_TYPE": "DATABASE", **settings})
