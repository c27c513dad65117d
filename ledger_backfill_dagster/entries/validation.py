"""The Validate Service: split transformed rows into entries to post and rejects with reasons.

The Pandera model `LedgerEntrySource` is the only statement of the rules. Each of its checks (and
its nullability rules) is applied to the whole frame as one vectorized operation through
Pandera's own `Check` objects, giving every failing row every rule it breaks, and the frame's
columns and dtypes are checked against the model before anything may be posted. Pandera's
`validate(lazy=True)` gives the same verdicts (a test holds them equal) but is not used here: its
error report reshapes each failing row of a dataframe-wide check cell by cell, a cost that grows
with the rejects, and its schema pass has a large fixed cost per frame (docs/performance.md, 'Why
the code is shaped this way').
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandera.api.checks import Check
from pandera.engines import pandas_engine

from ledger_backfill_dagster.entries.contract import (
    TIMESTAMP_RULES,
    LedgerEntrySource,
    as_contract_frame,
)
from ledger_backfill_dagster.lib.errors import InputError

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
    "source_row_key",
    "source_row_occurrence",
    "reference_generated",
]


class ContractError(InputError):
    """The frame itself breaks the contract (a missing column, a wrong dtype): a defect in the
    pipeline, not in the data, so no row of it can be judged, and none may be posted."""


def _passed(output: object, index: pd.Index) -> np.ndarray:
    """A check's verdict for every row (rows a check skipped as missing pass it, as in Pandera:
    missing values are judged by the nullability rule)."""
    if not isinstance(output, pd.Series):
        return np.full(len(index), bool(output))
    if not output.index.equals(index):
        output = output.reindex(index, fill_value=True)
    return output.fillna(False).astype(bool).to_numpy()


def _frame_check_passed(check: Check, frame: pd.DataFrame) -> np.ndarray:
    """A dataframe-wide check's verdict for every row. Its function is called as Pandera's
    backend calls it (`apply_table`), and a row passes where Pandera passes it (Pandera also
    passes a row whose every column is missing: never one of ours, `source_row_id` is never
    missing). Pandera's post-processing collects failure cases we never read, a third of the
    validation's time (docs/performance.md); `test_transform` holds the verdicts equal to
    Pandera's own `validate(lazy=True)`."""
    if check.groupby is not None or check.element_wise:
        return _passed(check(frame).check_output, frame.index)
    return _passed(check._check_fn(frame, **check._check_kwargs), frame.index)


def rule_verdicts(frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(rule names, a rules × rows matrix of failures), every rule of the model, in its order."""
    schema = LedgerEntrySource.to_schema()
    names: list[str] = []
    failed: list[np.ndarray] = []
    for name, column in schema.columns.items():
        values = frame[name]
        if not column.nullable:
            names.append(f"{name}: missing")
            failed.append(values.isna().to_numpy())
        for check in column.checks:
            names.append(check.name)
            failed.append(~_passed(check(values).check_output, frame.index))
    for check in schema.checks:
        names.append(check.name)
        failed.append(~_frame_check_passed(check, frame))
    matrix = np.vstack(failed) if failed else np.zeros((0, len(frame)), dtype=bool)
    return names, matrix


def check_schema(frame: pd.DataFrame) -> None:
    """The model's columns and their types, checked the way Pandera checks them, without the
    formatting that makes most of its schema-only pass's cost (docs/performance.md, 'Why the
    code is shaped this way')."""
    schema = LedgerEntrySource.to_schema()
    absent = sorted(set(schema.columns) - set(frame.columns))
    if absent:
        raise ContractError(f"transformed frame lacks the contract's columns {absent}")
    wrong = []
    for name, column in schema.columns.items():
        if column.dtype is None:
            continue
        try:
            fits = column.dtype.check(pandas_engine.Engine.dtype(frame[name].dtype))
        except TypeError:
            fits = False
        if not fits:
            wrong.append(f"{name} is {frame[name].dtype}, the contract says {column.dtype}")
    if wrong:
        raise ContractError("transformed frame does not fit the contract: " + "; ".join(wrong))


def reasons_by_row(transformed: pd.DataFrame) -> dict[int, list[str]]:
    """Every failing row position → every rule it breaks, in the model's order."""
    frame = as_contract_frame(transformed)
    check_schema(frame)
    names, matrix = rule_verdicts(frame)
    _only_timestamp_reasons(names, matrix)
    bad_rows = np.flatnonzero(matrix.any(axis=0))
    return {int(row): [names[r] for r in np.flatnonzero(matrix[:, row])] for row in bad_rows}


def _only_timestamp_reasons(names: list[str], matrix: np.ndarray) -> None:
    """A row without a timestamp gets its timestamp reason alone, as a CSV row with that text
    does (the extract stage judges nothing else of a row it cannot place): the same row, the
    same reasons, whatever the source (issue 20)."""
    rules = np.isin(names, TIMESTAMP_RULES)
    if not rules.any():
        return
    unplaced = matrix[rules].any(axis=0)
    if unplaced.any():
        matrix[np.ix_(~rules, unplaced)] = False


def split(transformed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(entries that meet the contract, rejects as source_row_id + reasons)."""
    transformed = as_contract_frame(transformed.reset_index(drop=True))
    reasons = reasons_by_row(transformed)
    bad = np.zeros(len(transformed), dtype=bool)
    bad[list(reasons)] = True
    details = transformed["metadata_problem"].to_numpy()
    rejects = pd.DataFrame(
        {
            "source_row_id": transformed.loc[bad, "source_row_id"].astype("int64").to_numpy(),
            "reasons": [_with_detail(reasons[int(i)], details[i]) for i in np.flatnonzero(bad)],
        }
    )
    valid = transformed.loc[~bad, POSTABLE_COLUMNS] if bad.any() else transformed[POSTABLE_COLUMNS]
    valid = valid.reset_index(drop=True)
    return valid, rejects


def _with_detail(reasons: list[str], metadata_problem: object) -> list[str]:
    if metadata_problem is pd.NA or metadata_problem is None:
        return reasons
    return [f"{r} ({metadata_problem})" if r.startswith("metadata:") else r for r in reasons]
