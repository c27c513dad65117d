"""Locate and load the SQL kept in the repository's `sql/` folder."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


def sql_dir() -> Path:
    override = os.environ.get("LEDGER_SQL_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "sql"


@cache
def query(name: str) -> str:
    """The text of `sql/queries/<name>.sql`."""
    return (sql_dir() / "queries" / f"{name}.sql").read_text(encoding="utf-8")
