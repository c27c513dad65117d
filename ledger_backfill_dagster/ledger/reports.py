"""Files a person can hand to an auditor: per-partition error reports and reconciliation reports.

Layout under REPORTS_DIR (default <LEDGER_BACKFILL_HOME>/reports):
  <source_key>/errors/<partition>.csv            every reject of that partition, with reasons
  <source_key>/reconciliation/<first>_<last>.md  the reconciliation report, readable
  <source_key>/reconciliation/<first>_<last>_*.csv  its tables
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ledger_backfill_dagster.ledger.reconcile import (
    BALANCES_BY_CURRENCY_COLUMNS,
    CONTROL_TOTAL_COLUMNS,
    CURRENCY_TOTAL_COLUMNS,
    DRIFT_COLUMNS,
    PARTITION_COLUMNS,
    PARTITION_CSV_NAMES,
    Reconciliation,
)

# When an initial load validated its balances: balances_validated_at, after its indexes were built.
LOAD_MODE_COLUMNS = [
    "mode",
    "requested_mode",
    "reason",
    "status",
    "rebuild_seconds",
    "balances_validated_at",
    "accounts_with_drift",
]
ERROR_COLUMNS = ["source_row_id", "source_file", "line_number", "reasons", "raw_row"]
# OWASP, "CSV Injection": a spreadsheet takes a cell beginning with one of these for a formula.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# Text that is a plain number (a negative amount, say) is no formula: it stays as it is.
PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def spreadsheet_cell(value: object) -> object:
    """A value as a CSV cell that a spreadsheet shows and never runs, as OWASP advises: text
    that begins with a formula trigger gets a leading `'` (spreadsheets read it as "text" and do
    not show it), and the writer quotes every text cell; numbers stay numbers. The raw value
    stays exact in the database (ledger_backfill_rejects.raw_text / raw_row, bank_accounts)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):  # a line number pandas widened to float (NaN = missing)
        return None if math.isnan(value) else int(value) if value.is_integer() else value
    if isinstance(value, bool | int | Decimal | np.integer):
        return value
    text = str(value)
    if text.startswith(FORMULA_TRIGGERS) and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV of these rows, every cell through `spreadsheet_cell`, text quoted."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow([spreadsheet_cell(name) for name in header])
        writer.writerows([spreadsheet_cell(value) for value in row] for row in rows)


def write_error_report(
    root: Path, source_key: str, partition_key: str, rejects: pd.DataFrame
) -> Path | None:
    target = root / source_key / "errors" / f"{partition_key}.csv"
    if rejects.empty:
        target.unlink(missing_ok=True)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    frame = rejects.reindex(columns=ERROR_COLUMNS).copy()
    frame["reasons"] = frame["reasons"].map(lambda r: "; ".join(r))
    write_csv(target, ERROR_COLUMNS, frame.itertuples(index=False, name=None))
    return target


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"


def _spaced(column: str) -> str:
    return column.replace("_", " ")


def summary_markdown(r: Reconciliation) -> str:
    verdict = "RECONCILES" if r.reconciles else "DOES NOT RECONCILE"
    v = r.entry_verification
    parts = [
        f"# Reconciliation: {verdict}\n",
        f"Source `{r.source_id}`, {len(r.partitions)} partition(s).\n",
        "## Row accounting (read = posted + duplicates + conflicts + rejected)\n",
        _table(
            [
                {
                    "read": r.rows_read,
                    "posted": r.total("posted"),
                    "duplicates": r.total("duplicates"),
                    "conflicts": r.total("conflicts"),
                    "rejected": r.total("rejected") + r.unpartitioned_rejects,
                    "of which without partition": r.unpartitioned_rejects,
                }
            ],
            ["read", "posted", "duplicates", "conflicts", "rejected", "of which without partition"],
        ),
        "## Entry verification (6.1)\n",
        _table(
            [v],
            [
                "total_entries",
                "unique_references",
                "unique_ledgers",
                "earliest_entry",
                "latest_entry",
            ],
        ),
        "## Control totals per currency (source = ledger + held)\n",
        _table(
            [{_spaced(c): getattr(t, c) for c in CONTROL_TOTAL_COLUMNS} for t in r.control_totals],
            [_spaced(c) for c in CONTROL_TOTAL_COLUMNS],
        ),
        "## Debits and credits per ledger and currency\n",
        _table(r.currency_totals, CURRENCY_TOTAL_COLUMNS),
        "## Stored balances per currency vs entries\n",
        _table(r.balances_by_currency, BALANCES_BY_CURRENCY_COLUMNS),
        "## Balance reconciliation (6.2): accounts whose balance differs from their entries\n",
        _table(r.balance_drift, DRIFT_COLUMNS),
        "## Outbox (6.3)\n",
        _table(r.outbox_status, ["status", "count", "oldest", "newest"]),
        "## Load mode of this run (LOAD_MODE)\n",
        _table(r.load_modes, LOAD_MODE_COLUMNS) if r.load_modes else "_not recorded_\n",
        "## Problems\n",
        "".join(f"- {p}\n" for p in r.problems) or "_none_\n",
    ]
    return "\n".join(parts)


def write_reconciliation(root: Path, source_key: str, r: Reconciliation) -> Path:
    keys = [p.partition_key for p in r.partitions]
    name = f"{keys[0]}_{keys[-1]}" if keys else "empty"
    folder = root / source_key / "reconciliation"
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / f"{name}.md"
    markdown.write_text(summary_markdown(r), encoding="utf-8")
    write_csv(
        folder / f"{name}_partitions.csv",
        [PARTITION_CSV_NAMES.get(c, c) for c in PARTITION_COLUMNS],
        ([p.as_row()[c] for c in PARTITION_COLUMNS] for p in r.partitions),
    )
    write_csv(
        folder / f"{name}_balances.csv",
        list(DRIFT_COLUMNS),
        ([d[c] for c in DRIFT_COLUMNS] for d in r.balance_drift),
    )
    write_csv(
        folder / f"{name}_control_totals.csv",
        list(CONTROL_TOTAL_COLUMNS),
        ([getattr(t, c) for c in CONTROL_TOTAL_COLUMNS] for t in r.control_totals),
    )
    return markdown
