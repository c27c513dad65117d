"""2. The COPY floor: the same rows COPYed into `ledger_entries` as migrated, with their outbox rows
into `dual_ledger_outbox` as migrated (what posting writes: issue 15's live floor), without its
foreign keys, without its non-unique indexes, into a bare table, and with psycopg's binary
COPY. Also the floor of an initial load: both tables COPYed with only their primary and unique
indexes, then the dropped indexes built as `LOAD_MODE=initial` builds them; no posting of any
kind can do an initial load faster on this server."""

from __future__ import annotations

import io
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from benchmarks.common import Dataset, Server, fmt_rate, prepare_ledger, rate, say
from ledger_backfill_dagster.entries.fields import CANONICAL_FIELDS
from ledger_backfill_dagster.entries.validation import POSTABLE_COLUMNS

# What the posting stage adds to a validated entry's own columns when it inserts it
# (posting/post_batch.sql); id and created_at take their defaults.
PROVENANCE_COLUMNS = [
    "backfill_source_id",
    "backfill_source_type",
    "backfill_partition",
    "backfill_run_id",
    "content_fingerprint",
]


def copy_columns(url: str) -> list[tuple[str, str]]:
    """(column, type name) of every ledger_entries column the posting stage fills: the validated
    entry's columns the table has, then the provenance columns, typed as migrated."""
    with psycopg.connect(url) as conn:
        types = dict(
            conn.execute(
                "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = 'ledger_entries'::regclass AND a.attnum > 0"
                " AND NOT a.attisdropped"
            ).fetchall()
        )
    names = [c for c in POSTABLE_COLUMNS if c in types] + PROVENANCE_COLUMNS
    return [(name, types[name]) for name in names]


def copy_table(data: Dataset, columns: list[tuple[str, str]]) -> pa.Table:
    """The generated rows as those columns (credit side = debit side, no FX)."""
    names = list(CANONICAL_FIELDS)
    raw = pacsv.read_csv(
        data.entries_file,
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True
        ),
    )
    n = raw.num_rows
    text = pa.string()
    row_ids = pa.array(range(2, n + 2), pa.int64())  # the line number, as the CSV source counts
    values = {
        "source_row_id": row_ids,
        "source_row_key": pc.cast(row_ids, text),
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
        "content_fingerprint": pa.array(["copy"] * n, text),
    }
    missing = [name for name, _ in columns if name not in values]
    if missing:
        raise RuntimeError(f"the COPY floor has no values for ledger_entries columns {missing}")
    return pa.table({name: values[name] for name, _ in columns})


def csv_payload(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buffer.getvalue()


def timed_copy(url: str, target: str, columns: list[str], payload: bytes) -> float:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, columns))
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


def timed_copy_with_outbox(
    url: str, columns: list[str], payload: bytes, table: pa.Table, first: int = 0
) -> float:
    """The entries, then one outbox row each (the ids a fresh identity gives them; `first` rows
    come before these), in one transaction, as a batch of posting writes both tables."""
    n = table.num_rows
    outbox = pa.table(
        {
            "ledger_entry_id": pa.array(range(first + 1, first + n + 1), pa.int64()),
            "ledger_id": table["ledger_id"],
            "reference_id": table["reference_id"],
        }
    )
    outbox_payload = csv_payload(outbox)
    entries = sql.SQL("COPY ledger_entries ({}) FROM STDIN (FORMAT csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    outbox_copy = (
        "COPY dual_ledger_outbox (ledger_entry_id, ledger_id, reference_id) FROM STDIN (FORMAT csv)"
    )
    chunk = 1 << 20
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for statement, data in ((entries, payload), (outbox_copy, outbox_payload)):
                view = memoryview(data)
                with cur.copy(statement) as copy:
                    for i in range(0, len(view), chunk):
                        copy.write(view[i : i + chunk])
        conn.commit()
        return time.perf_counter() - t0


def timed_binary_copy(url: str, table: pa.Table, columns: list[tuple[str, str]]) -> float:
    """psycopg's binary COPY (`write_row` with `set_types`); Python builds every value."""
    values = table.to_pydict()
    values["amount"] = [Decimal(v) for v in values["amount"]]
    values["credit_amount"] = values["amount"]
    values["timestamp_utc"] = [datetime.fromisoformat(v) for v in values["timestamp_utc"]]
    names = [name for name, _ in columns]
    rows = zip(*(values[c] for c in names), strict=True)
    statement = sql.SQL("COPY ledger_entries ({}) FROM STDIN (FORMAT binary)").format(
        sql.SQL(", ").join(map(sql.Identifier, names))
    )
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types([type_name for _, type_name in columns])
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


def timed_initial_load_floor(
    url: str, columns: list[str], table: pa.Table, sessions: int = 1
) -> dict:
    """What an initial load cannot avoid, and nothing else: the entries and their outbox rows
    COPYed into both tables with only their primary and unique indexes (one transaction), then
    the indexes `LOAD_MODE=initial` drops built again with its settings, and both tables
    analysed (ledger/load_mode.py: rebuild). No staging, classification, balance or checkpoint.
    With `sessions` > 1 the rows are split in that many consecutive parts COPYed at once, each
    in its own session (an initial load may use both cores)."""
    from concurrent.futures import ThreadPoolExecutor

    from ledger_backfill_dagster.ledger.load_mode import BUILD_SETTINGS
    from ledger_backfill_dagster.lib.sql_files import query

    with psycopg.connect(url, autocommit=True) as conn:
        dropped = conn.execute(query("loads/secondary_indexes")).fetchall()
        for name, _ in dropped:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    n = table.num_rows
    step = -(-n // sessions)
    parts = [(table.slice(i, step), i) for i in range(0, n, step)]
    payloads = [(csv_payload(part), part, first) for part, first in parts]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(lambda p: timed_copy_with_outbox(url, columns, *p), payloads))
    copy_seconds = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for name, value in BUILD_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        for _, definition in dropped:
            conn.execute(definition)
        conn.execute("ANALYZE ledger_entries")
        conn.execute("ANALYZE dual_ledger_outbox")
        build_seconds = time.perf_counter() - t0
    seconds = copy_seconds + build_seconds
    return {
        "seconds": seconds,
        "copy_seconds": copy_seconds,
        "build_seconds": build_seconds,
        "indexes": len(dropped),
        "sessions": sessions,
        "rate": rate(table.num_rows, seconds),
    }


def bench_copy(server: Server, data: Dataset, binary: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}

    with server.database("copyledger") as url:
        prepare_ledger(url, data.accounts_file)
        columns = copy_columns(url)
        names = [name for name, _ in columns]
        table = copy_table(data, columns)
        payload = csv_payload(table)
        n = results["entries"] = table.num_rows
        shape = describe_ledger_table(url)
        seconds = timed_copy(url, "ledger_entries", names, payload)
        results["ledger"] = {"seconds": seconds, "rate": rate(n, seconds), "table": shape}
    say(
        f"  COPY (csv) into ledger_entries as migrated ({shape}): "
        f"{n:,} rows in "
        f"{seconds:.2f} s = {fmt_rate(results['ledger']['rate'])}"
    )

    with server.database("copyoutbox") as url:
        prepare_ledger(url, data.accounts_file)
        seconds = timed_copy_with_outbox(url, names, payload, table)
        results["ledger_outbox"] = {"seconds": seconds, "rate": rate(n, seconds)}
    say(
        f"  COPY (csv) into ledger_entries and dual_ledger_outbox as migrated: {n:,} rows each in "
        f"{seconds:.2f} s = {fmt_rate(results['ledger_outbox']['rate'])}"
    )

    for label, strip_indexes in (("no_fk", False), ("unique_only", True)):
        with server.database(f"copy{label.replace('_', '')}") as url:
            prepare_ledger(url, data.accounts_file)
            dropped = strip_ledger_table(url, strip_indexes)
            if not strip_indexes and not dropped:
                continue  # the schema has no foreign keys on ledger_entries to price
            seconds = timed_copy(url, "ledger_entries", names, payload)
            results[f"ledger_{label}"] = {
                "seconds": seconds,
                "rate": rate(n, seconds),
                "dropped": dropped,
            }
        say(
            f"  COPY (csv) into ledger_entries without {', '.join(dropped) or 'nothing'}: "
            f"{seconds:.2f} s = {fmt_rate(results[f'ledger_{label}']['rate'])}"
        )

    for sessions in (1, 2):
        with server.database(f"copyinitial{sessions}") as url:
            prepare_ledger(url, data.accounts_file)
            floor = timed_initial_load_floor(url, names, table, sessions)
        results["initial_floor" if sessions == 1 else f"initial_floor_{sessions}"] = floor
        say(
            f"  floor of an initial load, {sessions} session(s): COPY into both tables with only"
            f" PK + unique {floor['copy_seconds']:.2f} s, then {floor['indexes']} indexes built "
            f"{floor['build_seconds']:.2f} s: {floor['seconds']:.2f} s = {fmt_rate(floor['rate'])}"
        )

    with server.database("copybare") as url:
        with psycopg.connect(url) as conn:
            conn.execute(
                sql.SQL("CREATE TABLE bare_entries ({})").format(
                    sql.SQL(", ").join(
                        sql.SQL("{} {}").format(sql.Identifier(name), sql.Identifier(type_name))
                        for name, type_name in columns
                    )
                )
            )
        seconds = timed_copy(url, "bare_entries", names, payload)
        results["bare"] = {"seconds": seconds, "rate": rate(n, seconds)}
    say(
        f"  COPY (csv) into a bare table (no index, no constraint): {n:,} rows in "
        f"{seconds:.2f} s = {fmt_rate(results['bare']['rate'])}"
    )

    if binary:
        with server.database("copybinary") as url:
            prepare_ledger(url, data.accounts_file)
            seconds = timed_binary_copy(url, table, columns)
            results["ledger_binary"] = {"seconds": seconds, "rate": rate(n, seconds)}
        say(
            f"  COPY (binary, write_row) into ledger_entries: {n:,} rows in {seconds:.2f} s"
            f" = {fmt_rate(results['ledger_binary']['rate'])}"
        )
    return results
