"""`ledger-backfill`: generate data, migrate, watch, pause/resume and summarize backfills."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import psycopg

from ledger_backfill_dagster.lib.env import check_range
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.redaction import MalformedUrlError, check_secret_settings, redact
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.lib.user_files import UserFileError
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase


def _database() -> LedgerDatabase:
    import os

    return LedgerDatabase(database_url=os.environ.get("DATABASE_URL") or None)


def cmd_generate(args: argparse.Namespace) -> int:
    from ledger_backfill_dagster.sources.generate import generate

    data = generate(
        Path(args.out),
        args.entries,
        args.days,
        args.accounts,
        date.fromisoformat(args.start),
        args.seed,
    )
    print(f"wrote {data.entries} entries over {data.days} days to {data.entries_file}")
    print(f"wrote chart of accounts to {data.accounts_file}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = _database().migrate()
    print(f"applied migrations: {applied or 'none pending'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The seed's monitoring queries: progress, stalled partitions, completion (ledger/status.py)."""
    from ledger_backfill_dagster.ledger.status import read_status, schema_missing, status_text
    from ledger_backfill_dagster.resources.settings import MonitoringSettings

    if args.stall_seconds is not None:
        check_range("STALL_THRESHOLD_SECONDS", args.stall_seconds)  # --stall-seconds stands for it
        stall = args.stall_seconds
    else:
        stall = MonitoringSettings.from_env().stall_threshold_seconds
    # Read-only (no migration), so the least-privilege reader role can watch.
    with _database().connection() as conn:
        try:
            status = read_status(conn, stall, args.source)
        except psycopg.Error as exc:
            if not schema_missing(exc):
                raise
            print("no backfill has run yet: the ledger schema does not exist")
            return 0
    if args.json:
        print(json.dumps(status.as_json(), indent=1))
    else:
        print(status_text(status))
    return 1 if status.stalled and args.fail_on_stalled else 0


def cmd_roles(args: argparse.Namespace) -> int:
    """Create the least-privilege group roles and grant them on this database (sql/roles.sql)."""
    from ledger_backfill_dagster.ledger.roles import RoleNames, apply_roles

    with _database().connection() as conn:
        names = apply_roles(conn, RoleNames.with_prefix(args.prefix))
    print(
        f"roles ready: {names.reader} (read), {names.backfill} (backfill: insert entries, update"
        f" balances, no delete), {names.rollback} (rollback: may delete entries)"
    )
    print("grant them to login roles, e.g. GRANT ledger_backfill TO backfill_svc;")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with _database().connection() as conn:
        conn.execute(query("posting/request_pause"), (args.source or "*", "cli"))
        conn.commit()
    print(
        f"pause requested for {args.source or 'all sources'}: running backfills stop after their current batch"
    )
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _database().connection() as conn:
        conn.execute(
            "DELETE FROM ledger_backfill_pause_requests WHERE source_id = %s", (args.source or "*",)
        )
        conn.commit()
    print("pause request cleared; re-materialize the partitions (UI: Materialize / re-execute, or")
    print(
        "dagster asset materialize ... --partition-range A...B) to resume after the last committed batch"
    )
    return 0


def cmd_rebuild_indexes(args: argparse.Namespace) -> int:
    """Finish an initial load (LOAD_MODE=initial) whose process died: build its indexes again."""
    from ledger_backfill_dagster.ledger.load_mode import rebuild_unfinished

    database = _database()
    database.migrate()
    print(rebuild_unfinished(database.connect))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Reconcile the ledger for a source's partitions and print the report (used by make demo)."""
    from ledger_backfill_dagster.ledger.reconcile import reconcile_source
    from ledger_backfill_dagster.ledger.reports import summary_markdown
    from ledger_backfill_dagster.resources.settings import SourceSettings
    from ledger_backfill_dagster.resources.stage_store import StageStore

    check_secret_settings()  # as the code location does when it loads
    source = SourceSettings.from_env().reader()
    store = StageStore.default()
    folder = store.root / source.source_key / "extracted"
    keys = sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []
    with _database().connection() as conn:
        report = reconcile_source(
            conn,
            source.source_id,
            store.rows_read(source.source_key, keys),
            store.validated_paths(source.source_key, keys),
            keys,
        )
    print(summary_markdown(report))
    return 0 if report.reconciles else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger-backfill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a deterministic canonical CSV and chart of accounts")
    g.add_argument("--out", default="data")
    g.add_argument("--entries", type=int, default=10_000)
    g.add_argument("--days", type=int, default=31)
    g.add_argument("--accounts", type=int, default=50)
    g.add_argument("--start", default="2024-01-01")
    g.add_argument("--seed", type=int, default=42)
    g.set_defaults(func=cmd_generate)

    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)

    s = sub.add_parser("status", help="backfill progress, stalled and completed partitions")
    s.add_argument("--source", default=None)
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--stall-seconds",
        type=int,
        default=None,
        help="stalled after this long without a checkpoint (default STALL_THRESHOLD_SECONDS or 3600)",
    )
    s.add_argument("--fail-on-stalled", action="store_true", help="exit 1 if any is stalled")
    s.set_defaults(func=cmd_status)

    p = sub.add_parser("pause", help="ask running backfills to stop after their current batch")
    p.add_argument("--source", default=None, help="source id (default: all sources)")
    p.set_defaults(func=cmd_pause)
    r = sub.add_parser("resume", help="clear a pause request")
    r.add_argument("--source", default=None)
    r.set_defaults(func=cmd_resume)

    ro = sub.add_parser(
        "roles", help="create the least-privilege reader/backfill/rollback roles (sql/roles.sql)"
    )
    ro.add_argument("--prefix", default="", help="prefix for the role names (default none)")
    ro.set_defaults(func=cmd_roles)

    sub.add_parser(
        "rebuild-indexes",
        help="build the indexes an initial load (LOAD_MODE=initial) dropped, if its run died;"
        " the next posting run does it too",
    ).set_defaults(func=cmd_rebuild_indexes)

    sub.add_parser(
        "summary", help="print the reconciliation of the configured source"
    ).set_defaults(func=cmd_summary)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except psycopg.Error as exc:
        print(f"database error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except (MalformedUrlError, SettingsError, UserFileError) as exc:
        # Their messages name the variable or file and show no secret (redacted all the same).
        print(f"configuration error: {redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
