"""`ledger-backfill`: generate data, migrate, watch, pause/resume and summarize backfills.

Exit codes (docs/operations.md, "CLI"): 0 fine; 1 a finding (a summary that does not reconcile,
`status --fail-on-stalled` with a stalled partition, `doctor` with something to fix); 2 a usage
or configuration error; 3 the database could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from importlib import metadata
from pathlib import Path

import psycopg

from ledger_backfill_dagster.lib.env import check_range
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.redaction import MalformedUrlError, check_secret_settings, redact
from ledger_backfill_dagster.lib.sql_files import query
from ledger_backfill_dagster.lib.user_files import UserFileError
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase

EXIT_OK, EXIT_FINDING, EXIT_CONFIGURATION, EXIT_UNREACHABLE = 0, 1, 2, 3


def _database() -> LedgerDatabase:
    """The ledger database of DATABASE_URL, or the embedded server, said on stderr once: a
    misspelt or forgotten variable must not go unnoticed."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        from ledger_backfill_dagster.doctor import ledger_database_text

        print(
            f"ledger-backfill: DATABASE_URL is not set: using the {ledger_database_text()}",
            file=sys.stderr,
        )
    return LedgerDatabase(database_url=url or None)


def _version() -> str:
    try:
        return metadata.version("ledger_backfill_dagster")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def cmd_generate(args: argparse.Namespace) -> int:
    from ledger_backfill_dagster.sources.generate import generate

    data = generate(
        Path(args.out),
        args.entries,
        args.days,
        args.accounts,
        args.start if isinstance(args.start, date) else date.fromisoformat(args.start),
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
            if args.json:
                print(json.dumps({"schema": "missing", "stalled": [], "checkpoints": []}))
            else:
                print("no backfill has run yet: the ledger schema does not exist")
            return EXIT_OK
    if args.json:
        print(json.dumps(status.as_json(), indent=1))
    else:
        print(status_text(status))
    return EXIT_FINDING if status.stalled and args.fail_on_stalled else EXIT_OK


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
    if args.json:
        print(json.dumps({"reconciles": report.reconciles, "problems": report.problems}))
    else:
        print(summary_markdown(report))
    return EXIT_OK if report.reconciles else EXIT_FINDING


def cmd_doctor(args: argparse.Namespace) -> int:
    """Which database and instance storage are used, migrations, source files, roles."""
    from ledger_backfill_dagster import doctor

    check_secret_settings()
    checks = doctor.diagnose(_database())
    print(json.dumps(doctor.as_json(checks), indent=1) if args.json else doctor.as_text(checks))
    states = {c.state for c in checks}
    if doctor.UNREACHABLE in states:
        return EXIT_UNREACHABLE
    return EXIT_FINDING if doctor.FINDING in states else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledger-backfill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ledger-backfill {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a deterministic canonical CSV and chart of accounts")
    g.add_argument("--out", default="data", help="folder to write into (default data)")
    g.add_argument("--entries", type=int, default=10_000, help="entries (default 10000)")
    g.add_argument("--days", type=int, default=31, help="days they spread over (default 31)")
    g.add_argument("--accounts", type=int, default=50, help="accounts in the chart (default 50)")
    g.add_argument("--start", type=_iso_date, default="2024-01-01", help="first day, YYYY-MM-DD")
    g.add_argument("--seed", type=int, default=42, help="random seed (same seed, same bytes)")
    g.set_defaults(func=cmd_generate)

    sub.add_parser("migrate", help="apply pending schema migrations").set_defaults(func=cmd_migrate)

    s = sub.add_parser("status", help="backfill progress, stalled and completed partitions")
    s.add_argument("--source", default=None, help="only this source id (default: all)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--stall-seconds",
        type=int,
        default=None,
        help="stalled after this long without a checkpoint (default STALL_THRESHOLD_SECONDS or 3600)",
    )
    s.add_argument(
        "--fail-on-stalled",
        action="store_true",
        help="exit 1 if any is stalled (without it, a stall is reported and the exit is 0)",
    )
    s.set_defaults(func=cmd_status)

    p = sub.add_parser("pause", help="ask running backfills to stop after their current batch")
    p.add_argument("--source", default=None, help="source id (default: all sources)")
    p.set_defaults(func=cmd_pause)
    r = sub.add_parser("resume", help="clear a pause request")
    r.add_argument("--source", default=None, help="source id (default: the all-sources request)")
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

    su = sub.add_parser("summary", help="print the reconciliation of the configured source")
    su.add_argument("--json", action="store_true", help="machine-readable output")
    su.set_defaults(func=cmd_summary)

    d = sub.add_parser(
        "doctor",
        help="which ledger database and instance storage are used, migrations, source files, roles",
    )
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)

    args = parser.parse_args(argv)  # a usage error exits 2 here, with argparse's message
    try:
        return args.func(args)
    except psycopg.OperationalError as exc:
        print(f"database error (unreachable): {redact(str(exc).strip())}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except psycopg.Error as exc:
        print(f"database error: {redact(str(exc).strip())}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except (MalformedUrlError, SettingsError, UserFileError) as exc:
        # Their messages name the variable or file and show no secret (redacted all the same).
        print(f"configuration error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIGURATION


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
