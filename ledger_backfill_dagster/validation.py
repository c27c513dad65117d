"""The Validate Service: split transformed rows into entries to post and rejects with reasons."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa

from ledger_backfill_dagster.contract import LedgerEntrySource

# Columns the posting stage needs; everything else was only there for the contract.
POSTABLE_COLUMNS = [
    "source_row_id",
    "line_number",
    "ledger_id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "currency_code",
    "credit_amount",
    "credit_currency_code",
    "asset_type",
    "transaction_type",
    "reference_id",
    "timestamp_utc",
    "fx_rate",
    "metadata",
]


def reasons_by_row(transformed: pd.DataFrame) -> dict[int, list[str]]:
    """Run the contract lazily; every failing row index → every rule it breaks, in rule order."""
    try:
        LedgerEntrySource.validate(transformed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        cases = cases[cases["index"].notna()]
        reasons: dict[int, list[str]] = {}
        for index, check, column in cases[["index", "check", "column"]].itertuples(index=False):
            reason = _describe(str(check), str(column))
            bucket = reasons.setdefault(int(index), [])
            if reason not in bucket:
                bucket.append(reason)
        return reasons
    return {}


def _describe(check: str, column: str) -> str:
    if check == "not_nullable":
        return f"{column}: missing"
    if check.startswith("metadata:"):
        return check
    return check


def split(transformed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(entries that meet the contract, rejects as source_row_id + reasons)."""
    reasons = reasons_by_row(transformed)
    bad = transformed.index.isin(list(reasons))
    metadata_detail = transformed["metadata_problem"]
    rejects = pd.DataFrame(
        {
            "source_row_id": transformed.loc[bad, "source_row_id"].astype("int64").to_numpy(),
            "reasons": [
                _with_detail(reasons[i], metadata_detail.iloc[i]) for i in transformed.index[bad]
            ],
        }
    )
    valid = transformed.loc[~bad, POSTABLE_COLUMNS].reset_index(drop=True)
    return valid, rejects


def _with_detail(reasons: list[str], metadata_problem: object) -> list[str]:
    if metadata_problem is pd.NA or metadata_problem is None:
        return reasons
    return [f"{r} ({metadata_problem})" if r.startswith("metadata:") else r for r in reasons]
