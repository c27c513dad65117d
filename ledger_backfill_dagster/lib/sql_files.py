"""Locate and load the SQL kept in the repository's top-level `sql/` folder.

One rule, first match wins:

1. `LEDGER_SQL_DIR`, when set (a deployment that ships its own copy); it must be a directory.
2. The copy inside the installed package, `ledger_backfill_dagster/_sql/`: a built wheel carries
   `sql/` there as package data (pyproject.toml, `[tool.hatch.build.targets.wheel.sources]`).
3. The checkout's `sql/` beside the package: a source tree or an editable install, where `_sql/`
   does not exist.

The installed copy comes before the checkout's so that an installed package never reads a `sql/`
folder that merely happens to sit next to its site-packages.

Queries live one per file in `queries/<area>/<name>.sql` (posting/, rollback/, reconcile/ ...)
and are loaded by `query("area/name")`, once per process.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from pathlib import Path

from ledger_backfill_dagster.lib.errors import TerminalError

SQL_DIR_VARIABLE = "LEDGER_SQL_DIR"
PACKAGED_FOLDER = "_sql"
# Anchored on the top-level package, not on this module's folder, so the rule holds wherever
# inside the package this module lives.
_TOP_PACKAGE = __name__.partition(".")[0]


class SqlFilesNotFoundError(TerminalError, FileNotFoundError):
    """No SQL folder where the rule looks; the message names every place it looked."""


def _package_root() -> Path:
    root = resources.files(_TOP_PACKAGE)
    # A Path whenever the package is unpacked on disk (every pip install). The migration runner
    # globs and reads files, which a zipped package could not offer without extracting them.
    if not isinstance(root, Path):
        raise SqlFilesNotFoundError(f"{_TOP_PACKAGE} is not installed as files on disk: {root}")
    return root


def sql_dir() -> Path:
    """The folder holding the migrations, `roles.sql` and `queries/<area>/` (see the module's
    rule)."""
    override = os.environ.get(SQL_DIR_VARIABLE)
    if override:
        if not Path(override).is_dir():
            raise SqlFilesNotFoundError(f"{SQL_DIR_VARIABLE}={override} is not a directory")
        return Path(override)
    package_root = _package_root()
    packaged = package_root / PACKAGED_FOLDER
    if packaged.is_dir():
        return packaged
    checkout = package_root.parent / "sql"
    if checkout.is_dir():
        return checkout
    raise SqlFilesNotFoundError(
        f"no SQL folder: {SQL_DIR_VARIABLE} is unset, and neither {packaged} (an installed wheel)"
        f" nor {checkout} (a checkout) exists"
    )


QUERIES_FOLDER = "queries"


@cache
def query(name: str) -> str:
    """The text of `sql/queries/<name>.sql`; `name` is `area/name` (one subfolder per area of the
    code: `posting/post_batch`), or a bare name for a file at the folder's top."""
    parts = name.split("/")
    # A name, not a path: nothing may step out of queries/ or start from the filesystem's root.
    if not all(part and part not in {".", ".."} and "\\" not in part for part in parts):
        raise ValueError(f"query name {name!r} is not area/name")
    folder = sql_dir()
    path = folder.joinpath(QUERIES_FOLDER, *parts[:-1], f"{parts[-1]}.sql")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = (
            f"{SQL_DIR_VARIABLE}={folder}"
            if os.environ.get(SQL_DIR_VARIABLE)
            else f"{folder} ({SQL_DIR_VARIABLE} unset)"
        )
        raise SqlFilesNotFoundError(
            f"no query {name!r}: {path} does not exist in the SQL folder {where}"
        ) from None
