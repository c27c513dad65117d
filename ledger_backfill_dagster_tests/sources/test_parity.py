"""Source parity (issue 20): the same row meets the same fate whether it comes from a CSV file, a
database table (typed or all text), the API (JSON strings or JSON numbers) or the SCB feed.

The corpus (`support/parity_corpus.py`, a line per case naming its rule) is delivered through every source
type and backfilled through all five assets (real Dagster runs) into a fresh ledger per source,
with the same chart of accounts, in four configurations (two zones, each with a DST gap and
overlap inside a run). The CSV run is the reference: it must give every case the outcome the
corpus declares, and every other source must give each case it can express exactly the CSV's
outcome (posted with the same stored values, a duplicate, a conflict, or rejected with the same
reason list), the same row accounting and the same control totals per currency. What a source
cannot express is declared per case and reported, never skipped silently.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from ledger_backfill_dagster.entries.contract import LedgerEntrySource
from ledger_backfill_dagster.entries.timestamps import TIMESTAMP_REASONS, parse_utc
from ledger_backfill_dagster.entries.transform import TransformRules, transform
from ledger_backfill_dagster.entries.validation import split
from ledger_backfill_dagster.lib import exact_json
from ledger_backfill_dagster.lib.http_client import MalformedPageError, WrittenNumber
from ledger_backfill_dagster.resources.stage_store import staged_frame
from ledger_backfill_dagster.sources.api import ApiSource, json_text
from ledger_backfill_dagster.sources.scb import SCB_FIELDS
from ledger_backfill_dagster_tests.conftest import fresh_database
from ledger_backfill_dagster_tests.support import parity_corpus as pc
from ledger_backfill_dagster_tests.support.hardening_support import write_accounts
from ledger_backfill_dagster_tests.support.helpers import (
    assert_ledger_invariants,
    materialize_range,
)
from ledger_backfill_dagster_tests.support.ledger_api_server import LedgerApiServer

TOKEN = "parity-token-4f1e"
BANK = "SB-PARITY"
TOKEN_PATTERN = re.compile(r"PX[0-9]{3}Q")
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
NUMBER_FIELDS = ("amount", "fxRate", "amountMinor")
# Settings a run must not inherit from the environment or an earlier run.
CLEARED = (
    "BACKFILL_SOURCE_FILE",
    "ACCOUNT_MAP_FILE",
    "TRANSACTION_TYPE_MAP_FILE",
    "COLUMN_MAP_FILE",
    "BATCH_SIZE",
    "SKIP_DUPLICATES",
    "FORCE_REDO",
    "PARALLEL_WORKERS",
    "REPORTS_DIR",
    "BACKFILL_SOURCE_URL",
    "BACKFILL_SOURCE_TABLE",
    "BACKFILL_SOURCE_QUERY",
    "BACKFILL_SOURCE_COLUMN_MAP",
    "BACKFILL_SOURCE_TIMESTAMP_COLUMN",
    "BACKFILL_SOURCE_ID_COLUMN",
    "BACKFILL_API_TOKEN",
    "SCB_SOVEREIGN_BANK_ID",
    "BACKFILL_SOURCE_PAGE_SIZE",
)
# Non-nullable columns whose "<column>: missing" guard no source row can reach: the readers
# stage every field as text and the transformation fills each (empty text, LEDGER_ID, fiat, a
# generated reference), so the guard only catches a defect of the pipeline.
GUARDS = {
    "source_row_id: missing": "every reader gives its own row id",
    "ledger_id: missing": "the transformation fills LEDGER_ID",
    "debit_account_id: missing": "a missing id is staged as empty text (debitAccountId: empty)",
    "credit_account_id: missing": "a missing id is staged as empty text (creditAccountId: empty)",
    "currency_code: missing": "a missing code is empty text (not an ISO 4217 currency)",
    "asset_type: missing": "the transformation fills fiat",
    "transaction_type: missing": "a missing type is empty text (transactionType: empty)",
    "reference_id: missing": "the transformation generates a reference",
    "amount: missing": "a row without amount or amountMinor is amount: not a plain decimal",
}


# -- the corpus as each source holds it ---------------------------------------------------------


def cases_for(source: str) -> list[pc.Case]:
    return [c for c in pc.corpus() if source not in c.not_expressible]


def write_csv(cases: list[pc.Case], path: Path) -> Path:
    lines = [pc.csv_line({f: f for f in pc.CSV_HEADER}).encode()]
    for case in cases:
        lines.append(case.raw if case.raw is not None else pc.csv_line(case.values()).encode())
    path.write_bytes(b"".join(lines))
    return path


COLUMNS = {
    "ledgerId": "ledger_id",
    "debitAccountId": "debit_account_id",
    "creditAccountId": "credit_account_id",
    "amount": "amount",
    "amountMinor": "amount_minor",
    "currencyCode": "currency_code",
    "assetType": "asset_type",
    "transactionType": "transaction_type",
    "referenceId": "reference_id",
    "timestampUtc": "timestamp_utc",
    "fxRate": "fx_rate",
    "metadata": "metadata",
}
# (numbers, timestamp, metadata) column types per database source.
TABLE_TYPES = {
    pc.DB_TYPED: ("numeric", "timestamp", "jsonb"),
    pc.DB_TZ: ("numeric", "timestamptz", "jsonb"),
    pc.DB_TEXT: ("text", "text", "text"),
}


def load_table(source: str, url: str, table: str, config: pc.Config, cases: list[pc.Case]) -> None:
    """The cases as rows of a table of this source's column types; a value the column refuses
    fails the test unless the case declares it (it is then not among `cases`)."""
    numbers, stamp, meta = TABLE_TYPES[source]
    types = {"amount": numbers, "amountMinor": numbers, "fxRate": numbers}
    types |= {"timestampUtc": stamp, "metadata": meta}
    columns = [
        sql.SQL("{} {}").format(sql.Identifier(COLUMNS[f]), sql.SQL(types.get(f, "text")))
        for f in pc.CSV_HEADER
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        # The loading session reads a naive text as SOURCE_TIMEZONE's time, as the legacy
        # application that wrote a timestamptz would have.
        conn.execute("SELECT set_config('TimeZone', %s, false)", (config.zone,))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id BIGINT PRIMARY KEY, {})").format(
                sql.Identifier(table), sql.SQL(", ").join(columns)
            )
        )
        conn.execute(sql.SQL("CREATE INDEX ON {} (timestamp_utc)").format(sql.Identifier(table)))
        names = sql.SQL(", ").join(sql.Identifier(COLUMNS[f]) for f in pc.CSV_HEADER)
        casts = sql.SQL(", ").join(
            sql.SQL("%s::{}").format(sql.SQL(types.get(f, "text"))) for f in pc.CSV_HEADER
        )
        insert = sql.SQL("INSERT INTO {} (id, {}) VALUES (%s, {})").format(
            sql.Identifier(table), names, casts
        )
        for case in cases:
            values = case.values()
            row = [
                _column_value(values[f], types.get(f, "text"), config.zone) for f in pc.CSV_HEADER
            ]
            try:
                conn.execute(insert, [_row_id(case), *row])
            except psycopg.Error as exc:
                pytest.fail(
                    f"{source} refuses case {case.name!r} ({exc.diag.message_primary}): "
                    "declare it not_expressible with the reason"
                )
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _column_value(text: str, column_type: str, zone: str) -> str | None:
    if column_type == "text":
        return text
    if not text.strip():
        return None  # a typed column says "nothing" with NULL
    if column_type == "timestamp" and _has_offset(text):
        # A naive column holds the wall time: an instant is written as SOURCE_TIMEZONE's.
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None).isoformat()
    return text


def _has_offset(text: str) -> bool:
    return bool(re.search(r"T[0-9:.,]+(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$", text))


def _row_id(case: pc.Case) -> int:
    return case.number + 1


def api_entry(case: pc.Case, numbers: bool) -> dict[str, object]:
    values = case.values()
    entry: dict[str, object] = {"id": _row_id(case)}
    for name in pc.CSV_HEADER:
        if name == "amountMinor" and not values[name]:
            continue  # an optional field: absent when the row does not give it
        entry[name] = _json_value(name, values[name], numbers, objects=numbers)
    return entry | case.native


def scb_entry(case: pc.Case) -> dict[str, object]:
    values = case.values()
    entry: dict[str, object] = {"sequence": _row_id(case)}
    for scb_name, name in SCB_FIELDS.items():
        if name == "amountMinor" and not values[name]:
            continue
        # The SCB sends amounts as strings and `details` as an object (docs/sources.md).
        entry[scb_name] = _json_value(name, values[name], numbers=False, objects=True)
    renamed = {name: scb for scb, name in SCB_FIELDS.items()}
    return entry | {renamed[k]: v for k, v in case.native.items()}


def _json_value(name: str, text: str, numbers: bool, objects: bool) -> object:
    """What a JSON feed sends for a field: the text; or (`numbers`) a JSON number where the
    text is one; or (`objects`) the metadata as the JSON object it holds."""
    if objects and name == "metadata" and text.strip():
        try:
            document, _ = exact_json.loads(text)
        except (ValueError, RecursionError):
            return text
        return _wire(document) if isinstance(document, dict) else text
    if numbers and name in NUMBER_FIELDS and JSON_NUMBER.fullmatch(text):
        return WrittenNumber(text)  # the page carries the number as the text wrote it
    return text


def _wire(node: object) -> object:
    """A parsed document with every number as a Decimal, so the page carries it as a number
    (exact_json keeps one NUMERIC cannot hold as its text)."""
    if isinstance(node, exact_json.UnstorableNumber):
        return Decimal(node)
    if isinstance(node, dict):
        return {k: _wire(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_wire(v) for v in node]
    return node


def serve_day(case: pc.Case) -> str:
    """The day window an API serves the entry in: its UTC day, or (no readable timestamp) the
    run's first day, where the reader keeps it for the contract to reject."""
    parsed, _ = parse_utc(pd.Series([case.values()["timestampUtc"]]), case.config.zone)
    if pd.isna(parsed[0]):
        return case.config.days[0]
    day = parsed[0].strftime("%Y-%m-%d")
    assert day in case.config.days, f"{case.name}: served outside the run's days ({day})"
    return day


class ParityServer(LedgerApiServer):
    """The test API server, writing JSON numbers exactly (json.dumps has no Decimal)."""

    def _content(self, method, path, query, body_in, headers):  # type: ignore[no-untyped-def]
        if path == "/entries":
            entries = self.api_entries.get(query["from"][:10], [])
            offset, limit = int(query.get("cursor", 0)), int(query["limit"])
            following = str(offset + limit) if offset + limit < len(entries) else None
            page = {"entries": entries[offset : offset + limit], "next_cursor": following}
            return 200, json_text(page).encode()
        if path == f"/sovereign-banks/{self.bank}/ledger-entries":
            entries = self.scb_entries.get(query["from"][:10], [])
            number, size = int(query["page"]), int(query["pageSize"])
            document = {
                "sovereignBankId": self.bank,
                "page": number,
                "totalPages": -(-len(entries) // size),
                "entries": entries[(number - 1) * size : number * size],
            }
            return 200, json_text(document).encode()
        return super()._content(method, path, query, body_in, headers)


# -- running and reading the ledger ----------------------------------------------------------


@dataclass
class Outcomes:
    """What one source's ledger holds for the corpus, by case token."""

    source: str
    by_token: dict[str, list[tuple]] = field(default_factory=dict)
    placement: dict[str, list[tuple]] = field(default_factory=dict)  # rejects' (stage, partition)
    reports: list[dict[str, object]] = field(default_factory=list)
    delivered: int = 0
    generated: dict[str, str] = field(default_factory=dict)  # generated reference → its row


def run_source(source: str, admin_url: str, work: Path) -> Outcomes:
    """Deliver the corpus through `source`, backfill each configuration into one fresh ledger,
    and read back every row's outcome."""
    accounts = write_accounts(work / "accounts.csv", pc.ACCOUNTS)
    outcomes = Outcomes(source)
    with fresh_database(admin_url) as ledger, _source_side(source, admin_url) as side:
        for config in pc.CONFIGS:
            cases = [c for c in cases_for(source) if c.config == config]
            outcomes.delivered += len(cases)
            env = {
                "DATABASE_URL": ledger,
                "LEDGER_BACKFILL_HOME": str(work / "state"),
                "BACKFILL_START_DATE": "2024-01-01",
                "RETRY_DELAY": "100",
                "ACCOUNTS_FILE": str(accounts),
                "SOURCE_TIMEZONE": config.zone,
                "LEDGER_ID": pc.LEDGER_ID,
                "BACKFILL_SOURCE_ID": f"parity-{source}-{config.name}",
                **side(config, cases, work),
            }
            with pytest.MonkeyPatch.context() as mp:
                for key in CLEARED:
                    mp.delenv(key, raising=False)
                for key, value in env.items():
                    mp.setenv(key, value)
                result = materialize_range(config.days[0], config.days[-1], raise_on_error=False)
            assert result.success, f"{source} {config.name}: the run failed"
            report = result.asset_materializations_for_node("reconciliation_report")[0].metadata
            outcomes.reports.append({k: getattr(v, "value", v) for k, v in report.items()})
        with psycopg.connect(ledger) as conn:
            assert_ledger_invariants(conn)
            _read_outcomes(conn, outcomes)
    return outcomes


@contextmanager
def _source_side(source: str, admin_url: str):  # type: ignore[no-untyped-def]
    """A function (config, cases, work) → the source's settings, with what it needs running."""
    if source == pc.CSV:

        def csv_side(config: pc.Config, cases: list[pc.Case], work: Path) -> dict[str, str]:
            path = write_csv(cases, work / f"{config.name}.csv")
            return {"BACKFILL_SOURCE_TYPE": "CSV", "BACKFILL_SOURCE_FILE": str(path)}

        yield csv_side
    elif source in pc.DATABASES:
        with fresh_database(admin_url) as url:

            def db_side(config: pc.Config, cases: list[pc.Case], work: Path) -> dict[str, str]:
                table = f"legacy_{config.name}"
                load_table(source, url, table, config, cases)
                return {
                    "BACKFILL_SOURCE_TYPE": "DATABASE",
                    "BACKFILL_SOURCE_URL": url,
                    "BACKFILL_SOURCE_TABLE": table,
                }

            yield db_side
    else:
        with ParityServer(token=TOKEN, bank=BANK) as server:

            def http_side(config: pc.Config, cases: list[pc.Case], work: Path) -> dict[str, str]:
                for case in cases:
                    day = serve_day(case)
                    if source == pc.SCB:
                        server.scb_entries[day].append(scb_entry(case))
                    else:
                        entry = api_entry(case, numbers=source == pc.API_NUMBERS)
                        server.api_entries[day].append(entry)
                return {
                    "BACKFILL_SOURCE_TYPE": "SCB" if source == pc.SCB else "API",
                    "BACKFILL_SOURCE_URL": server.url,
                    "BACKFILL_API_TOKEN": TOKEN,
                    "SCB_SOVEREIGN_BANK_ID": BANK,
                    "BACKFILL_SOURCE_PAGE_SIZE": "7",  # several pages a day
                }

            yield http_side


def _token(*texts: object) -> str:
    found = {t for text in texts if text for t in TOKEN_PATTERN.findall(str(text))}
    assert len(found) == 1, f"a stored row names {sorted(found) or 'no'} corpus token: {texts}"
    return found.pop()


SCB_KEYS = ("scbSovereignBankId", "scbSequence")
GENERATED = "BACKFILL-(generated)"


def _read_outcomes(conn: psycopg.Connection, out: Outcomes) -> None:
    add = lambda token, outcome: out.by_token.setdefault(token, []).append(outcome)  # noqa: E731
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for e in cur.execute("SELECT * FROM ledger_entries").fetchall():
            metadata = e["metadata"]
            if out.source == pc.SCB and metadata is not None:  # the feed's own lineage keys
                metadata = {k: v for k, v in metadata.items() if k not in SCB_KEYS} or None
            reference = e["reference_id"]
            if reference.startswith("BACKFILL-"):
                # Generated from the row's content, metadata included: the SCB's lineage keys
                # make its ids differ (asserted apart in `_generated_references`).
                out.generated[reference] = e["transaction_type"]
                reference = GENERATED
            add(
                _token(e["reference_id"], e["transaction_type"]),
                (
                    pc.POSTED,
                    e["ledger_id"],
                    reference,
                    e["debit_account_id"],
                    e["credit_account_id"],
                    e["amount"],
                    e["currency_code"],
                    e["credit_amount"],
                    e["credit_currency_code"],
                    e["asset_type"],
                    e["transaction_type"],
                    e["timestamp_utc"],
                    e["fx_rate"],
                    json.dumps(metadata, sort_keys=True, default=str),
                    e["backfill_partition"],
                ),
            )
        for r in cur.execute(
            "SELECT reasons, stage, partition_key, raw_row::text AS raw_row, raw_text"
            " FROM ledger_backfill_rejects"
        ).fetchall():
            token = _token(r["raw_row"], r["raw_text"])
            add(token, ("rejected", tuple(r["reasons"])))
            out.placement.setdefault(token, []).append((r["stage"], r["partition_key"]))
        for table, kind in (("duplicates", pc.DUPLICATE), ("conflicts", pc.CONFLICT)):
            for d in cur.execute(f"SELECT reference_id FROM ledger_backfill_{table}").fetchall():  # noqa: S608
                add(_token(d["reference_id"]), (kind,))
    for outcomes in out.by_token.values():
        outcomes.sort(key=repr)


# -- the reference run: CSV -------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    return run_source(pc.CSV, pg_admin_url, tmp_path_factory.mktemp("parity_csv"))


def test_the_csv_reference_gives_every_case_its_declared_outcome(reference: Outcomes) -> None:
    by_token: dict[str, list[pc.Case]] = defaultdict(list)
    for case in pc.corpus():
        by_token[case.token].append(case)
    failures = []
    for token, cases in by_token.items():
        got = reference.by_token.get(token, [])
        wanted = sorted(
            (("rejected", c.expect) if isinstance(c.expect, tuple) else (c.expect,)) for c in cases
        )
        kinds = sorted(o[:1] if o[0] != "rejected" else o[:2] for o in got)
        if kinds != sorted(w if w[0] != pc.POSTED else (pc.POSTED,) for w in wanted):
            failures.append(f"{token} {[c.name for c in cases]}: expected {wanted}, got {kinds}")
    assert not failures, "\n".join(failures)
    assert set(reference.by_token) == set(by_token), "a stored row belongs to no case"


# -- every other source against it ------------------------------------------------------------


@pytest.mark.parametrize(
    "source", [pc.DB_TYPED, pc.DB_TZ, pc.DB_TEXT, pc.API_STRINGS, pc.API_NUMBERS, pc.SCB]
)
def test_every_source_gives_each_row_the_csv_outcome(
    source: str, reference: Outcomes, pg_admin_url: str, tmp_path: Path
) -> None:
    got = run_source(source, pg_admin_url, tmp_path)
    expressed = cases_for(source)
    tokens = {c.token for c in expressed}
    skipped = [c for c in pc.corpus() if source in c.not_expressible]
    print(f"\n{source}: {len(expressed)} cases delivered, {len(skipped)} not expressible:")
    for case in skipped:
        print(f"  - {case.name}: {case.not_expressible[source]}")
    # Nothing dropped silently: every delivered row is accounted for, nothing else appears.
    assert got.delivered == len(expressed)
    assert set(got.by_token) == tokens
    differences = []
    expected = Outcomes(source)
    for token in sorted(tokens):
        group = [c for c in expressed if c.token == token]
        wanted = expected.by_token[token] = _expected(source, group, reference.by_token[token])
        if got.by_token[token] != wanted:
            differences.append(
                f"{token} {[c.name for c in group]}:\n    csv:     {wanted}\n"
                f"    {source}: {got.by_token[token]}"
            )
    assert not differences, f"{len(differences)} row(s) differ:\n" + "\n".join(differences)
    _generated_references(source, got, reference)
    # The row accounting and control totals agree over the rows this source carries.
    assert _accounting(got, tokens) == _accounting(expected, tokens)
    assert _control_totals(got, tokens) == _control_totals(reference, tokens)
    for report in got.reports:
        parts = sum(report[k] for k in ("posted", "duplicates", "conflicts", "rejected"))
        assert report["rows_read"] == parts and report["reconciles"], report
    assert sum(r["rows_read"] for r in got.reports) == len(expressed)
    _print_placement(source, got, reference)


def _expected(source: str, group: list[pc.Case], csv_outcomes: list[tuple]) -> list[tuple]:
    """The CSV's outcomes of a token's rows, with the documented differences of this source
    (`Case.differs`) in place of the CSV's outcome of those rows."""
    wanted = list(csv_outcomes)
    for case in group:
        if source in case.differs:
            wanted.remove((case.expect,))
            wanted.append((case.differs[source][0],))
    return sorted(wanted, key=repr)


def _generated_references(source: str, got: Outcomes, reference: Outcomes) -> None:
    """Generated references are the CSV's (the same content gives the same id), but for the
    SCB, whose lineage keys are part of the metadata the id is generated from."""
    mine = {row: ref for ref, row in got.generated.items()}
    theirs = {row: ref for ref, row in reference.generated.items() if row in mine}
    assert mine.keys() == theirs.keys()
    if source == pc.SCB:
        assert all(mine[row] != theirs[row] for row in mine), "the SCB's metadata is the CSV's"
    else:
        assert mine == theirs


def _accounting(outcomes: Outcomes, tokens: set[str]) -> Counter[str]:
    return Counter(o[0] for t in tokens for o in outcomes.by_token[t])


def _control_totals(outcomes: Outcomes, tokens: set[str]) -> dict[str, tuple[int, Decimal]]:
    totals: dict[str, tuple[int, Decimal]] = {}
    for token in tokens:
        for o in outcomes.by_token[token]:
            if o[0] == pc.POSTED:
                count, amount = totals.get(o[6], (0, Decimal(0)))
                totals[o[6]] = (count + 1, amount + o[5])
    return totals


def _print_placement(source: str, got: Outcomes, reference: Outcomes) -> None:
    """Rejects with the same reasons may sit at another stage: a row whose timestamp cannot be
    read is an extract-stage reject of no partition in a CSV, and a validate-stage reject of
    the day an API served it in (docs/contract.md, Source parity). Reported, not compared."""
    moved = {
        t: (reference.placement[t], p)
        for t, p in got.placement.items()
        if reference.placement.get(t) != p
    }
    for token, (csv_place, here) in sorted(moved.items()):
        print(f"  {token}: rejected at {here} (csv: {csv_place})")


# -- the corpus itself --------------------------------------------------------------------------


def contract_rule_names() -> list[str]:
    """Every rule of the contract: the model's checks, its nullability guards, and the extract
    stage's timestamp reasons."""
    schema = LedgerEntrySource.to_schema()
    names = [f"{n}: missing" for n, column in schema.columns.items() if not column.nullable]
    names += [check.name for column in schema.columns.values() for check in column.checks]
    names += [check.name for check in schema.checks]
    return list(dict.fromkeys([*names, *TIMESTAMP_REASONS]))


def test_every_contract_rule_has_a_parity_case() -> None:
    cases = pc.corpus()
    uncovered = [
        name
        for name in contract_rule_names()
        if name not in GUARDS and not any(c.rule.startswith(name) for c in cases)
    ]
    assert not uncovered, f"contract rules without a parity case: {uncovered}"
    assert set(GUARDS) <= set(contract_rule_names()), "a guard exempted that is no rule"
    reasons = {r for c in cases if isinstance(c.expect, tuple) for r in c.expect}
    assert len(reasons) >= 40
    assert 100 <= len(cases) <= 200


def test_what_a_source_cannot_express_is_declared_with_a_reason() -> None:
    cases = pc.corpus()
    for case in cases:
        assert case.rule.strip(), case.name
        for source, why in case.not_expressible.items():
            assert source in pc.SOURCES and source != pc.CSV, (case.name, source)
            assert len(why) > 20, (case.name, source)
        if case.raw is not None:  # a malformed line exists in a CSV only
            assert set(case.not_expressible) == set(pc.SOURCES) - {pc.CSV}, case.name
    table = Counter(source for case in cases for source in case.not_expressible)
    print("\ncases each source cannot express:", dict(sorted(table.items())))
    assert table[pc.DB_TEXT] < table[pc.DB_TYPED]  # text columns carry more than typed ones


def test_an_unpaired_surrogate_is_a_reject_in_an_extra_key_and_a_named_broken_page_in_a_field(
    tmp_path: Path,
) -> None:
    """JSON may escape half a UTF-16 pair, which no text column holds (a CSV cannot carry it at
    all: those bytes are not UTF-8). In an extra key the row is one reject with the metadata's
    reason; in a text field the page is refused naming entry and field, never a crash."""
    row = {
        "debitAccountId": "U1",
        "creditAccountId": "U2",
        "amount": "1.00",
        "currencyCode": "USD",
        "transactionType": "PAYMENT",
    }
    with ParityServer(token=TOKEN) as server:
        server.api_entries["2024-03-30"] = [
            {"id": 1, **row, "referenceId": "S-1", "timestampUtc": "2024-03-30T10:00:00Z"},
            {"id": 2, **row, "referenceId": "S-2", "timestampUtc": "2024-03-30T11:00:00Z"}
            | {"note": "a\ud800b"},
        ]
        server.api_entries["2024-03-31"] = [
            {"id": 3, **row, "referenceId": "S-3", "timestampUtc": "2024-03-31T10:00:00Z"}
            | {"transactionType": "PAY\udc00"},
        ]
        source = ApiSource(base_url=server.url, token=TOKEN, max_retries=0, retry_delay_ms=10)
        staged = source.extract(["2024-03-30"], tmp_path / "stage").staged["2024-03-30"]
        frame = staged_frame(pq.read_table(staged).sort_by("source_row_id"))
        rules = TransformRules(account_currencies={"U1": "USD", "U2": "USD"})
        valid, rejects = split(transform(frame, rules))
        assert list(valid["reference_id"]) == ["S-1"]
        assert rejects.to_dict("records") == [
            {
                "source_row_id": 2,
                "reasons": [
                    "metadata: holds text JSONB cannot store (an unpaired UTF-16 surrogate escape)"
                ],
            }
        ]
        with pytest.raises(MalformedPageError, match="entry id 3: 'transactionType' holds an"):
            source.extract(["2024-03-31"], tmp_path / "stage")
