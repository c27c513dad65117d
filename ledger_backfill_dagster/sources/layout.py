"""Column layouts: how a source's column names map onto the ledger entry contract's fields.

Three layouts are known: the canonical one (the seed's `LedgerEntrySource` names), the legacy
export of the seed's `transformCSVToLedgerEntry` example, and the snake_case names of
`ledger_entries` itself (for database sources). Anything else needs a declared column map
(COLUMN_MAP_FILE, JSON `{"sourceColumn": "canonicalField"}`). Columns a layout does not name are
kept and folded into the entry's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ledger_backfill_dagster.entries.fields import (
    AMOUNT_FIELDS,
    REQUIRED_FIELDS,
    SOURCE_FIELDS,
)
from ledger_backfill_dagster.lib.errors import InputError
from ledger_backfill_dagster.lib.user_files import UserFileError, read_user_text

LEGACY_LAYOUT = {
    "ledger": "ledgerId",
    "debit_account": "debitAccountId",
    "credit_account": "creditAccountId",
    "amount": "amount",
    "currency": "currencyCode",
    "asset_type": "assetType",
    "txn_type": "transactionType",
    "reference_id": "referenceId",
    "timestamp": "timestampUtc",
    "fx_rate": "fxRate",
}
SNAKE_LAYOUT = {
    "ledger_id": "ledgerId",
    "debit_account_id": "debitAccountId",
    "credit_account_id": "creditAccountId",
    "amount": "amount",
    "currency_code": "currencyCode",
    "asset_type": "assetType",
    "transaction_type": "transactionType",
    "reference_id": "referenceId",
    "timestamp_utc": "timestampUtc",
    "fx_rate": "fxRate",
    "metadata": "metadata",
    "amount_minor": "amountMinor",
    "amountMinor": "amountMinor",
}


class LayoutError(InputError):
    """The source's columns cannot be mapped onto the entry contract."""


@dataclass(frozen=True)
class Layout:
    """For each source column: the canonical field it feeds, or None (an extra column)."""

    name: str
    fields_by_column: dict[str, str | None]

    def column_for(self, field: str) -> str | None:
        for column, mapped in self.fields_by_column.items():
            if mapped == field:
                return column
        return None

    @property
    def extra_columns(self) -> list[str]:
        return [column for column, field in self.fields_by_column.items() if field is None]


class ColumnMapFileError(LayoutError, UserFileError):
    """COLUMN_MAP_FILE cannot be used; names the file and, where there is one, the line."""


def load_column_map(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    where = f"COLUMN_MAP_FILE {path}"
    try:
        text = read_user_text("COLUMN_MAP_FILE", path)
    except UserFileError as exc:
        raise ColumnMapFileError(str(exc)) from None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ColumnMapFileError(
            f"{where}: line {exc.lineno}, column {exc.colno}: not JSON ({exc.msg})"
        ) from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise ColumnMapFileError(
            f"{where}: a column map is a JSON object of column name → field name"
        )
    unknown = sorted(set(mapping.values()) - set(SOURCE_FIELDS))
    if unknown:
        raise ColumnMapFileError(f"{where}: unknown canonical fields {unknown}")
    return mapping


def detect_layout(columns: list[str], column_map: dict[str, str] | None = None) -> Layout:
    """Pick the layout for these column names, or explain why none fits."""
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise LayoutError(f"duplicate column names in header: {duplicates}")
    known = [
        ("canonical", {f: f for f in SOURCE_FIELDS}),
        ("legacy", LEGACY_LAYOUT),
        ("snake_case", SNAKE_LAYOUT),
    ]
    candidates: list[tuple[str, dict[str, str]]] = []
    if column_map:
        candidates.append(("declared", column_map))
    # A map that names every field stands alone; one whose columns this header has only some
    # of (`{"cents": "amountMinor"}`) renames those columns of a known layout. A declared
    # column is never ignored: folded into the metadata, it would lose what the user said it is.
    present = {c: f for c, f in (column_map or {}).items() if c in columns}
    for name, base in known:
        if present:
            candidates.append((f"declared+{name}", _overlay(base, present)))
        else:
            candidates.append((name, base))
    for name, mapping in candidates:
        mapped = {c: mapping.get(c) for c in columns}
        fields = {f for f in mapped.values() if f}
        if all(f in fields for f in REQUIRED_FIELDS) and fields & set(AMOUNT_FIELDS):
            return Layout(name, mapped)
    raise LayoutError(
        f"columns {columns} fit no known layout: each needs {list(REQUIRED_FIELDS)} and "
        f"{' or '.join(AMOUNT_FIELDS)} (canonical names, the legacy export names, or a "
        "COLUMN_MAP_FILE)"
    )


def _overlay(base: dict[str, str], declared: dict[str, str]) -> dict[str, str]:
    """`base` with the declared renames: a field the map assigns comes from its column only."""
    claimed = set(declared.values())
    merged = {column: field for column, field in base.items() if field not in claimed}
    merged.update(declared)
    return merged
