"""LOAD_MODE: post into a live ledger, or load an empty one the way PostgreSQL advises.

    live     every index and check as migrated; other writers may post beside the run.
    initial  PostgreSQL's "Populating a Database" (manual, section 14.4): the secondary indexes of
             ledger_entries and dual_ledger_outbox are dropped for the load and built once after
             it, with a larger maintenance_work_mem and parallel workers, and every balance is
             validated against its entries once, after the build.
    auto     (default) initial when the ledger holds no entry at all, live otherwise: loading
             into a ledger that holds anything is an operator's decision (LOAD_MODE=initial, in
             a maintenance window).

What never changes: the primary keys and every unique index stay (`loads/secondary_indexes.sql`
lists what is dropped), so exactly-once, duplicates, conflicts and checkpoints work as in live
mode; each batch still commits with its checkpoint.

Safety. An initial load holds an exclusive advisory lock (LOAD_LOCK_KEY) on its own connection for
the whole run; every live posting session holds it shared (`posting.PostingSessions`). So an
initial load starts only when no posting run is active, and a live run that starts during one
waits until the indexes are back. It also refuses to start while any other session holds a lock
on the ledger's tables, and, when declared, over entries its source did not write (another
source's, one posted outside the pipeline, or one from before source row keys). Auto falls back
to live in each of those cases, and says why.

Crashes. The load's row in `ledger_backfill_loads` records the definitions of the indexes it
dropped, in the transaction that drops them. A load killed while posting is continued by the next
run of the same source (auto or initial); any other next run, or a load killed while building,
builds the missing indexes first (`CREATE INDEX IF NOT EXISTS`, one statement each: a build
killed half-way leaves nothing behind) and validates the balances, then decides its own mode.
`ledger-backfill rebuild-indexes` does the same by hand.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.types.json import Jsonb

from ledger_backfill_dagster.ledger.errors import PostingError
from ledger_backfill_dagster.ledger.posting import (
    LOAD_LOCK_KEY,
    PostingOptions,
    end_with_its_client,
)
from ledger_backfill_dagster.lib.rows import named_row, one_row
from ledger_backfill_dagster.lib.sql_files import query

log = logging.getLogger(__name__)

LOAD_MODES = ("auto", "live", "initial")
DECISION_LOCK_KEY = LOAD_LOCK_KEY + 1  # held while a run decides its mode
LIVE, INITIAL = "live", "initial"
# Settings of the session that builds the indexes again (PostgreSQL's advice for bulk loads):
# sorts in memory, and up to two parallel workers beside the leader (the server's
# max_worker_processes still caps them).
BUILD_SETTINGS = {"maintenance_work_mem": "512MB", "max_parallel_maintenance_workers": "2"}
_CREATE_INDEX = re.compile(r"^CREATE INDEX (?!IF NOT EXISTS)", re.IGNORECASE)


class LoadModeRefused(PostingError):
    """LOAD_MODE=initial was asked for where it is unsafe: nothing was changed."""


@dataclass
class Load:
    """How one posting run loads the ledger; `finish()` ends it (builds the indexes again)."""

    requested: str
    mode: str
    reason: str
    load_id: int | None = None
    guard: psycopg.Connection | None = None  # holds LOAD_LOCK_KEY exclusively (initial only)
    prior_partitions: frozenset[str] = frozenset()
    dropped: list[dict[str, str]] = field(default_factory=list)
    rebuild_seconds: float | None = None
    drift: list[tuple[str, str, str]] | None = None  # (account, entries' sum, stored) after it
    # A run of the same source that joined a load another run owns: it posts as that load does
    # and validates every balance at its own end; the owner builds the indexes.
    joined_run: str | None = None
    joined: Callable[[], psycopg.Connection] | None = None  # how to connect for that check

    @property
    def initial(self) -> bool:
        return self.mode == INITIAL

    def posting_options(self, options: PostingOptions) -> PostingOptions:
        """The run's posting options in this mode. Initial mode defers the balance checks to
        one check of every account after the index build: the incremental check reads the
        (account, id) indexes the load has dropped."""
        if not self.initial:
            return options
        return replace(
            options,
            validate_balances=False,
            initial_load=True,
            prior_partitions=self.prior_partitions,
        )

    def finish(self) -> None:
        """Build the dropped indexes again, validate every balance, release the lock. Safe to
        call more than once; after an error the next run finishes it (see the module doc)."""
        guard, self.guard = self.guard, None
        joined, self.joined = self.joined, None
        if joined is not None:
            with joined() as conn:
                self.drift = _drift(conn)
                if self.load_id is not None:
                    _record_validation(conn, self.load_id, self.drift)
            return
        if guard is None:
            return
        try:
            if self.load_id is not None:
                self.rebuild_seconds, self.drift = rebuild(guard, self.load_id)
        finally:
            guard.close()  # ends the session: its advisory lock with it

    def metadata(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "load_mode": self.mode,
            "load_mode_requested": self.requested,
            "load_mode_reason": self.reason,
        }
        if self.joined_run is not None:
            found["joined_initial_load_of_run"] = self.joined_run
        elif self.initial:
            found["indexes_rebuilt"] = len(self.dropped)
            if self.rebuild_seconds is not None:
                found["index_rebuild_seconds"] = round(self.rebuild_seconds, 3)
        if self.initial and self.drift is not None:
            found["accounts_with_drift_after_load"] = len(self.drift)
        return found


def begin(
    connect: Callable[[], psycopg.Connection], source_id: str, run_id: str, requested: str
) -> Load:
    """Decide the run's mode, record it, and for an initial load drop the secondary indexes.
    Raises LoadModeRefused when LOAD_MODE=initial is unsafe; auto then falls back to live."""
    if requested not in LOAD_MODES:
        raise LoadModeRefused(
            f"LOAD_MODE must be one of {', '.join(LOAD_MODES)}, got {requested!r}"
        )
    guard = connect()
    guard.autocommit = True
    keep_guard = False
    try:
        _set_up_guard(guard)
        # One decision at a time: runs starting together see each other's load once decided,
        # so runs of one backfill join its initial load instead of waiting for it to end.
        guard.execute("SELECT pg_advisory_lock(%s)", (DECISION_LOCK_KEY,))
        load = _decide(guard, source_id, run_id, requested)
        guard.execute("SELECT pg_advisory_unlock(%s)", (DECISION_LOCK_KEY,))
        if load.joined_run is not None:
            load.joined = connect
        elif load.initial:
            keep_guard = True
            load.guard = guard
        return load
    finally:
        if not keep_guard:
            guard.close()


def _decide(guard: psycopg.Connection, source_id: str, run_id: str, requested: str) -> Load:
    unfinished = guard.execute(query("loads/unfinished")).fetchone()
    if unfinished is not None:
        if not _try_lock(guard):
            if _owner_alive(guard):
                _, owner, owner_run, status, _ = unfinished
                why = f"an initial load of {owner} (run {owner_run}) is running"
                if requested != LIVE and owner == source_id and status == "LOADING":
                    return _join(guard, source_id, run_id, requested, owner_run)
                if requested == INITIAL:
                    raise LoadModeRefused(f"LOAD_MODE=initial refused: {why}; wait for it to end")
                return _record_live(guard, source_id, run_id, requested, f"{why}: posted after it")
            # Its owner died, but live runs that waited for it now hold the lock shared: wait
            # for them (runs asking later queue behind this request), then finish the load.
            log.warning("an initial load's run died while live runs waited: waiting to finish it")
            guard.execute("SELECT pg_advisory_lock(%s)", (LOAD_LOCK_KEY,))
        # Read again now that the lock is held: its owner may have finished in between.
        unfinished = guard.execute(query("loads/unfinished")).fetchone()
        if unfinished is None:
            _unlock(guard)
    if unfinished is not None:
        load_id, owner, owner_run, status, dropped = unfinished
        if requested != LIVE and owner == source_id and status == "LOADING":
            guard.execute(query("loads/resume"), {"id": load_id, "run_id": run_id})
            log.warning("continuing the initial load of run %s, killed before it ended", owner_run)
            return Load(
                requested,
                INITIAL,
                f"continues the initial load of run {owner_run}, which did not end",
                load_id=load_id,
                prior_partitions=_source_partitions(guard, source_id),
                dropped=list(dropped),
            )
        log.warning("building the indexes an unfinished initial load (run %s) dropped", owner_run)
        rebuild(guard, load_id)
        _unlock(guard)
    if requested == LIVE:
        return _record_live(guard, source_id, run_id, requested, "LOAD_MODE=live")
    if not _try_lock(guard):
        return _refuse_or_live(guard, source_id, run_id, requested, "other posting runs are active")
    try:
        load = _initial_if_safe(guard, source_id, run_id, requested)
    except BaseException:
        _unlock(guard)
        raise
    if not load.initial:
        _unlock(guard)
    return load


def _initial_if_safe(
    guard: psycopg.Connection, source_id: str, run_id: str, requested: str
) -> Load:
    writers = guard.execute(query("loads/other_writers")).fetchall()
    if writers:
        named = ", ".join(f"pid {pid} ({app or 'no application name'})" for pid, app, _ in writers)
        return _refuse_or_live(
            guard, source_id, run_id, requested, f"other sessions use the ledger: {named}"
        )
    if requested == "auto":
        if one_row(guard.execute("SELECT EXISTS (SELECT 1 FROM ledger_entries)"))[0]:
            return _record_live(
                guard,
                source_id,
                run_id,
                requested,
                "the ledger holds entries (declare LOAD_MODE=initial for a maintenance window)",
            )
        reason = "the ledger was empty"
    else:
        foreign = one_row(guard.execute(query("loads/foreign_entries"), (source_id,)))[0]
        if foreign:
            raise LoadModeRefused(
                f"LOAD_MODE=initial refused: the ledger holds {foreign} entries that source "
                f"{source_id} did not post (another source's, posted outside the pipeline, or "
                "from before source row keys); use LOAD_MODE=live"
            )
        reason = "declared (LOAD_MODE=initial)"
    try:
        with guard.transaction(), guard.cursor(row_factory=named_row) as cur:
            # DROP INDEX waits for every reader of the table: not for long.
            cur.execute("SET LOCAL lock_timeout = '10s'")
            indexes = [
                {"name": r.name, "definition": r.definition}
                for r in cur.execute(query("loads/secondary_indexes")).fetchall()
            ]
            load_id = _record(
                guard, source_id, run_id, requested, INITIAL, reason, "LOADING", indexes
            )
            for index in indexes:
                cur.execute(f'DROP INDEX IF EXISTS "{index["name"]}"')
    except pgerrors.InsufficientPrivilege:
        return _refuse_or_live(
            guard, source_id, run_id, requested, "this role may not drop the ledger's indexes"
        )
    except pgerrors.LockNotAvailable:
        return _refuse_or_live(
            guard, source_id, run_id, requested, "the ledger's tables stayed busy for 10 s"
        )
    log.info("initial load: dropped %d secondary index(es) until the load ends", len(indexes))
    prior = _source_partitions(guard, source_id) if requested == INITIAL else frozenset()
    return Load(requested, INITIAL, reason, load_id, None, prior, indexes)


def _join(
    guard: psycopg.Connection, source_id: str, run_id: str, requested: str, owner_run: str
) -> Load:
    """Another run of this source owns a running initial load (runs of one backfill started
    together): post as it does, beside it, rather than wait for it to end."""
    reason = f"joined the initial load of run {owner_run}, which builds the indexes"
    load_id = _record(guard, source_id, run_id, requested, INITIAL, reason, "DONE")
    return Load(
        requested,
        INITIAL,
        reason,
        load_id,
        prior_partitions=_source_partitions(guard, source_id),
        joined_run=owner_run,
    )


def _drift(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """Every account whose balance differs from its entries: (account, entries' sum, stored)."""
    with conn.cursor(row_factory=named_row) as cur:
        return [
            (r.account_id, str(r.expected_balance), str(r.actual_balance))
            for r in cur.execute(query("reconcile/balance_drift")).fetchall()
        ]


def _record_validation(
    conn: psycopg.Connection, load_id: int, drift: list[tuple[str, str, str]]
) -> None:
    conn.execute(
        query("loads/balances_validated"), {"id": load_id, "accounts_with_drift": len(drift)}
    )
    conn.commit()


def rebuild(guard: psycopg.Connection, load_id: int) -> tuple[float, list[tuple[str, str, str]]]:
    """Build every index the load dropped (one statement each, so a build killed half-way is
    redone whole), refresh the planner's statistics, then check every balance against its
    entries. Returns the build's seconds and each account that does not match, as (account,
    sum of its entries, stored balance)."""
    row = guard.execute(
        "SELECT dropped_indexes FROM ledger_backfill_loads WHERE id = %s", (load_id,)
    ).fetchone()
    dropped = row[0] if row else []
    guard.execute(query("loads/set_status"), _status(load_id, "REBUILDING"))
    started = time.perf_counter()
    for name, value in BUILD_SETTINGS.items():
        guard.execute("SELECT set_config(%s, %s, false)", (name, value))
    for index in dropped:
        guard.execute(_CREATE_INDEX.sub("CREATE INDEX IF NOT EXISTS ", index["definition"]))
    guard.execute("ANALYZE ledger_entries")
    guard.execute("ANALYZE dual_ledger_outbox")
    seconds = time.perf_counter() - started
    # Validated before DONE: a load killed in between is validated by whoever finishes it.
    drift = _drift(guard)
    _record_validation(guard, load_id, drift)
    guard.execute(query("loads/set_status"), _status(load_id, "DONE", seconds))
    log.info(
        "initial load: %d index(es) built in %.1f s; %d account(s) differ from their entries",
        len(dropped),
        seconds,
        len(drift),
    )
    return seconds, drift


def rebuild_unfinished(connect: Callable[[], psycopg.Connection]) -> str:
    """`ledger-backfill rebuild-indexes`: finish an initial load whose process is gone."""
    with connect() as guard:
        guard.autocommit = True
        _set_up_guard(guard)
        unfinished = guard.execute(query("loads/unfinished")).fetchone()
        if unfinished is None:
            return "no initial load is unfinished: every index is in place"
        load_id, owner, owner_run = unfinished[:3]
        if not _try_lock(guard):
            return f"the initial load of {owner} (run {owner_run}) is still running: nothing done"
        seconds, drift = rebuild(guard, load_id)
        _unlock(guard)
        return (
            f"built the indexes of the initial load of {owner} (run {owner_run}) in {seconds:.1f} s; "
            f"{len(drift)} account balance(s) differ from their entries"
        )


def loads_of_run(conn: psycopg.Connection, source_id: str, run_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=named_row) as cur:
        rows = cur.execute(
            query("loads/of_run"), {"source_id": source_id, "run_id": run_id}
        ).fetchall()
    return [row._asdict() for row in rows]


def _source_partitions(guard: psycopg.Connection, source_id: str) -> frozenset[str]:
    return frozenset(r[0] for r in guard.execute(query("loads/source_partitions"), (source_id,)))


def _refuse_or_live(
    guard: psycopg.Connection, source_id: str, run_id: str, requested: str, why: str
) -> Load:
    if requested == INITIAL:
        raise LoadModeRefused(f"LOAD_MODE=initial refused: {why}; use LOAD_MODE=live")
    return _record_live(guard, source_id, run_id, requested, why)


def _record_live(
    guard: psycopg.Connection, source_id: str, run_id: str, requested: str, reason: str
) -> Load:
    load_id = _record(guard, source_id, run_id, requested, LIVE, reason, "DONE")
    return Load(requested, LIVE, reason, load_id)


def _record(
    guard: psycopg.Connection,
    source_id: str,
    run_id: str,
    requested: str,
    mode: str,
    reason: str,
    status: str,
    dropped: list[dict[str, str]] | None = None,
) -> int:
    """Record a run's load mode (loads/record.sql); returns the row's id."""
    row = guard.execute(
        query("loads/record"),
        {
            "source_id": source_id,
            "run_id": run_id,
            "requested_mode": requested,
            "mode": mode,
            "reason": reason,
            "status": status,
            "dropped_indexes": Jsonb(dropped or []),
        },
    )
    return int(one_row(row)[0])


def _status(load_id: int, status: str, seconds: float | None = None) -> dict[str, Any]:
    return {"id": load_id, "status": status, "rebuild_seconds": seconds}


def _set_up_guard(guard: psycopg.Connection) -> None:
    """The load's own session: it ends with its client (a killed load's lock must not outlive
    it), but never on the server's idle or statement timeouts, which would release the lock in
    the middle of a long load or cancel an index build."""
    end_with_its_client(guard)
    for name, value in (
        ("statement_timeout", "0"),
        ("lock_timeout", "0"),
        # A lost host (not only a killed process) ends the session, and its lock, in ~1 min.
        ("tcp_keepalives_idle", "30"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "3"),
    ):
        guard.execute("SELECT set_config(%s, %s, false)", (name, value))
    if guard.info.server_version >= 140000:
        guard.execute("SELECT set_config('idle_session_timeout', '0', false)")


def _owner_alive(guard: psycopg.Connection) -> bool:
    """Does another session hold the load lock exclusively (a running initial load), rather
    than only shared (live posting sessions)?"""
    found = guard.execute(query("loads/owner_alive"), {"key": LOAD_LOCK_KEY})
    return bool(one_row(found)[0])


def _try_lock(guard: psycopg.Connection) -> bool:
    return bool(one_row(guard.execute("SELECT pg_try_advisory_lock(%s)", (LOAD_LOCK_KEY,)))[0])


def _unlock(guard: psycopg.Connection) -> None:
    guard.execute("SELECT pg_advisory_unlock(%s)", (LOAD_LOCK_KEY,))
