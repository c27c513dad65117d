"""Passwords with special characters never leak (issue #13, class 8).

A real login role is given a password full of special characters (space, %, @, :, /, ?, #, quotes,
backslash). Written correctly (percent-encoded URL, quoted key=value, `?password=`) it is used by
real `dagster asset materialize`, `dagster job execute` and `ledger-backfill status` runs, for the
ledger, Dagster's storage and a DATABASE source; written raw (a malformed URL) the same commands
fail with a message naming the variable and showing nothing past the scheme. Either way neither the
password nor any spelling or fragment of it appears in any output, compute-log file, Dagster's run
and event storage, report or ledger row. The test servers trust local connections, so a login
succeeds whatever the password: that each form carries exactly the password is checked on
libpq's and SQLAlchemy's reading of it instead.

Hypothesis properties cover `redact` and the URL checks over arbitrary printable passwords.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from unittest.mock import patch
from urllib.parse import quote, quote_plus, unquote, urlsplit

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url

from ledger_backfill_dagster.instance import instance_postgres_url
from ledger_backfill_dagster.lib.redaction import (
    URL_SETTINGS,
    WHOLE_VALUE_SETTINGS,
    MalformedUrlError,
    Reason,
    check_http_url,
    check_postgres_url,
    check_secret_settings,
    redact,
    redact_patterns,
)
from ledger_backfill_dagster.lib.redaction import redact as redact_reexported
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster_tests.conftest import _url_for
from ledger_backfill_dagster_tests.e2e.test_security import database_text, files_text
from ledger_backfill_dagster_tests.support import cli
from ledger_backfill_dagster_tests.support.cli import dagster_home
from ledger_backfill_dagster_tests.support.legacy_source import load_legacy
from ledger_backfill_dagster_tests.support.pg_roles import login_role, unique_prefix, url_for_login

# Every special character the issue names, between six-character pieces that occur nowhere else.
SPECIAL = "Kx9fQe Qm7dRw%Rt4wZp@Zv2pXo:Yp8qLr/Lb3nMs?Hn6jNt#Jd5cPu'Wc1gSv\"Tg0sBy\\Sk7bCz!Aa"
FRAGMENTS = [piece for piece in re.split(r"[^A-Za-z0-9]+", SPECIAL) if len(piece) >= 6]
API_TOKEN = "tok Gh4kLm9p"  # a space: it cannot be sent as a bearer token


def spellings(secret: str) -> set[str]:
    escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), escaped}


def assert_nothing_of(secret: str, text: str, where: str) -> None:
    for spelling in spellings(secret):
        assert spelling not in text, f"the password (as {spelling!r}) appears in {where}"
    for fragment in FRAGMENTS:
        if fragment in secret:
            assert fragment not in text, f"a fragment of the password appears in {where}"


# -- properties of the redaction and the URL checks -------------------------------------------

PRINTABLE = "".join(c for c in string.printable if c not in "\n\r\x0b\x0c")
passwords = st.text(alphabet=PRINTABLE, min_size=1, max_size=40)
REDACTED_URL = "postgresql://user:***@host.example:5432/db"


def canned(setting: str, scheme: str | None) -> set[str]:
    """Every message a malformed value of `setting` may produce: built from the name, the scheme
    and a fixed reason, so it shows nothing past the scheme."""
    return {str(MalformedUrlError(setting, scheme, reason)) for reason in Reason.ALL}


@pytest.fixture(autouse=True, scope="module")
def no_secret_settings() -> Iterator[None]:
    """The properties check the patterns alone: no secret setting of the calling shell counts."""
    names = set(URL_SETTINGS) | set(WHOLE_VALUE_SETTINGS)
    with patch.dict(os.environ):
        for name in names:
            os.environ.pop(name, None)
        yield


@settings(max_examples=500, deadline=None)
@given(passwords)
def test_a_url_password_is_redacted_escaped_or_not(password: str) -> None:
    for url in (
        f"postgresql://user:{password}@host.example:5432/db",
        f"postgresql://user:{quote(password, safe='')}@host.example:5432/db",
    ):
        assert redact(url) == REDACTED_URL
        assert redact(f"connect('{url}') failed") == f"connect('{REDACTED_URL}') failed"


@settings(max_examples=500, deadline=None)
@given(passwords)
def test_a_raw_url_either_parses_as_meant_or_fails_showing_only_the_scheme(password: str) -> None:
    """libpq never reads part of the password as a host, port or database name: the URL parses
    into exactly the parts written, or fails with a fixed message."""
    url = f"postgresql://user:{password}@host.example:5432/db"
    try:
        info = check_postgres_url("DATABASE_URL", url)
    except MalformedUrlError as exc:
        assert str(exc) in canned("DATABASE_URL", "postgresql:")
        assert exc.__cause__ is None and exc.__context__ is None
        assert redact(str(exc)) == str(exc)
    else:
        assert info == {
            "user": "user",
            "password": unquote(password),
            "host": "host.example",
            "port": "5432",
            "dbname": "db",
        }


@settings(max_examples=500, deadline=None)
@given(passwords)
def test_every_well_formed_spelling_carries_the_password_and_is_redacted(password: str) -> None:
    encoded = quote(password, safe="")
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    forms = {
        f"postgresql://user:{encoded}@host.example:5432/db": REDACTED_URL,
        f"host=host.example user=u password='{escaped}' dbname=d": (
            "host=host.example user=u password=*** dbname=d"
        ),
        f"postgresql://user@host.example/db?password={encoded}&sslmode=require": (
            "postgresql://user@host.example/db?password=***&sslmode=require"
        ),
    }
    for form, redacted in forms.items():
        assert check_postgres_url("DATABASE_URL", form)["password"] == password
        assert redact(form) == redacted


@settings(max_examples=500, deadline=None)
@given(passwords)
def test_what_libpq_takes_for_a_raw_password_is_redacted(password: str) -> None:
    """key=value and query forms written raw: whatever the parser would read as the password is
    masked, or the value is refused with a fixed message."""
    fixed = "host=h password=*** dbname=d postgresql://user@host.example/db?password=***"
    for form, scheme in (
        (f"host=h password={password} dbname=d", None),
        (f"postgresql://user@host.example/db?password={password}", "postgresql:"),
    ):
        try:
            taken = check_postgres_url("DATABASE_URL", form).get("password", "")
        except MalformedUrlError as exc:
            assert str(exc) in canned("DATABASE_URL", scheme)
            continue
        if taken and taken not in fixed:
            assert taken not in redact(form), form


@settings(max_examples=300, deadline=None)
@given(passwords)
def test_an_http_url_is_checked_and_redacted_the_same_way(password: str) -> None:
    url = f"https://user:{password}@api.example:8443/v1"
    assert redact(url) == "https://user:***@api.example:8443/v1"
    try:
        check_http_url("BACKFILL_SOURCE_URL", url)
    except MalformedUrlError as exc:
        assert str(exc) in canned("BACKFILL_SOURCE_URL", "https:")
    else:  # accepted: read as written, no part of the password taken for the host or path
        parts = urlsplit(url)
        assert (parts.username, parts.hostname, parts.port) == ("user", "api.example", 8443)
        assert unquote(parts.password or "") == unquote(password) and parts.path == "/v1"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=PRINTABLE, min_size=4, max_size=30))
def test_a_known_secret_is_masked_wherever_it_appears(password: str) -> None:
    """The settings' own values are masked even where no pattern would find them (an error that
    quotes a bare piece of text)."""
    url = f"postgresql://user:{quote(password, safe='')}@host.example/db"
    with patch.dict(os.environ, {"DATABASE_URL": url, "BACKFILL_API_TOKEN": "tok-" + password}):
        for text in (f'bad value "{password}" here', f"token tok-{password}!", quote(password)):
            assert password not in redact(text)
            assert quote(password, safe="") not in redact(text)


def test_redact_is_importable_from_the_resource_module() -> None:
    assert redact_reexported is redact


def test_redaction_patterns_cover_tokens_and_mappings() -> None:
    text = (
        "Authorization: Bearer abc.DEF-123 url=https://api/x?token=t0k3n&page=2 "
        "{'password': 'p w'} PGPASSWORD=s3cr3t"
    )
    assert redact_patterns(text) == (
        "Authorization: Bearer *** url=https://api/x?token=***&page=2 "
        "{'password': '***'} PGPASSWORD=***"
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("DATABASE_URL", f"postgresql://u:{SPECIAL}@h/db"),
        ("DATABASE_URL", "postgresql://u:Kx9fQe%zzQm7dRw@h/db"),
        ("DATABASE_URL", "postgresql://u:Kx9fQe/Qm7dRw@h/db"),
        ("DATABASE_URL", "postgresql://u:Kx9fQe@Qm7dRw@h/db"),
        ("DATABASE_URL", "postgresql://u:Kx9fQe%00Qm7dRw@h/db"),
        ("DATABASE_URL", "postgresql://u:pw@h:Kx9fQe/db"),
        ("DATABASE_URL", "host=h password=Kx9fQe Qm7dRw"),
        ("DATABASE_URL", "host=h password='Kx9fQe Qm7dRw"),
        ("DATABASE_URL", "Kx9fQe:Qm7dRw@h/db"),
        ("DAGSTER_PG_URL", "postgresql+psycopg2://u:Kx9fQe Qm7dRw@h/db"),
        ("BACKFILL_SOURCE_URL", "postgres://u:Kx9fQe Qm7dRw@h/db"),
        ("BACKFILL_SOURCE_URL", "https://u:Kx9fQe/Qm7dRw@api.example/v1"),
        ("OUTBOX_RELAY_URL", "https://api.example:Kx9fQe/x"),
        ("STALL_ALERT_WEBHOOK_URL", "hooks.example/Kx9fQe"),
        ("ALERT_WEBHOOK_URL", "hooks.example/Kx9fQe"),
        ("BACKFILL_API_TOKEN", "Kx9fQe Qm7dRw"),
    ],
)
def test_a_malformed_setting_fails_naming_it_and_showing_nothing_past_the_scheme(
    setting: str, value: str
) -> None:
    with pytest.raises(MalformedUrlError) as failure:
        check_secret_settings({setting: value})
    message = str(failure.value)
    assert message.startswith(f"{setting} ")
    scheme = value.split(":", 1)[0].split("+")[0] + ":" if "://" in value else None
    assert message in canned(setting, scheme)
    assert "Kx9fQe" not in message and "Qm7dRw" not in message
    assert failure.value.__cause__ is None and failure.value.__context__ is None


def test_each_written_form_carries_exactly_the_password(
    database_url: str, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the real server, libpq (the ledger) and SQLAlchemy (Dagster's storage) both get the
    whole password from each well-formed spelling (trust auth would let a wrong one in)."""
    with login_role(database_url, pg_admin_url, f"{unique_prefix()}pw", SPECIAL) as url:
        for form in written_forms(url).values():
            with psycopg.connect(form) as conn:
                assert conn.info.password == SPECIAL
            monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
            monkeypatch.setenv("DATABASE_URL", form)
            assert make_url(instance_postgres_url()).password == SPECIAL


# -- the real commands ------------------------------------------------------------------------


def written_forms(url: str) -> dict[str, str]:
    """A percent-encoded login URL in its three well-formed spellings."""
    info = conninfo_to_dict(url)
    password = info.pop("password")
    plain = url.replace(f":{quote(password, safe='')}@", "@")
    joiner = "&" if "?" in plain else "?"
    return {
        "url": url,
        "conninfo": make_conninfo(**info, password=password),
        "query": f"{plain}{joiner}password={quote(password, safe='')}",
    }


def raw_form(url: str, password: str) -> str:
    """The login URL with the password written raw: malformed."""
    return url.replace(quote(SPECIAL, safe=""), password)


@pytest.fixture
def special_env(
    tmp_path: Path, backfill_env: dict[str, str], database_url: str, pg_admin_url: str
) -> Iterator[dict[str, object]]:
    """A role whose password is SPECIAL owning the test database, a three-day CSV, and a home
    for Dagster with the project's dagster.yaml (its storage in the same database)."""
    data = generate(tmp_path / "data", entries=600, days=3, accounts=12, start=date(2024, 1, 1))
    home = dagster_home(tmp_path)
    role = f"{unique_prefix()}sp"
    with login_role(database_url, pg_admin_url, role, SPECIAL, owns_database=True) as url:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DAGSTER_PG_URL", "BACKFILL_SOURCE_URL", "BACKFILL_API_TOKEN"}
        }
        env.update(
            {
                **backfill_env,
                "DATABASE_URL": url,
                "DAGSTER_HOME": str(home),
                "BACKFILL_SOURCE_FILE": str(data.entries_file),
                "ACCOUNTS_FILE": str(data.accounts_file),
                "BATCH_SIZE": "150",
            }
        )
        yield {"env": env, "url": url, "role": role, "data": data, "home": home}


def materialize(partition: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return cli.run(cli.materialize_command("--partition", partition), env)


def job_execute(partition: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return cli.run(
        cli.job_command("ledger_backfill_job", tags={"dagster/partition": partition}), env
    )


def status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return cli.run([str(cli.LEDGER_BACKFILL), "status"], env)


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


@pytest.fixture
def legacy_source(special_env: dict, pg_admin_url: str) -> Iterator[str]:
    """A separate source database holding the CSV's rows (DATABASE source), readable by the role."""
    name = f"lbt_src_{unique_prefix()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin_url = _url_for(pg_admin_url, name)
    try:
        load_legacy(admin_url, special_env["data"].entries_file)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT SELECT ON ledger_entries_legacy TO {}").format(
                    sql.Identifier(special_env["role"])
                )
            )
        yield url_for_login(admin_url, special_env["role"], SPECIAL)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.slow
def test_a_password_full_of_special_characters_is_used_and_never_shown(
    special_env: dict, legacy_source: str, database_url: str, tmp_path: Path
) -> None:
    """Each well-formed spelling through a real command, one day each: the ledger, Dagster's
    storage and (on the third day) a DATABASE source all log in as the role."""
    env, forms = special_env["env"], written_forms(special_env["url"])
    outputs = []
    ran = [
        materialize("2024-01-01", {**env, "DATABASE_URL": forms["url"]}),
        job_execute("2024-01-02", {**env, "DATABASE_URL": forms["conninfo"]}),
        materialize(
            "2024-01-03",
            {
                **env,
                "DATABASE_URL": forms["query"],
                "BACKFILL_SOURCE_TYPE": "DATABASE",
                "BACKFILL_SOURCE_URL": legacy_source,
                "BACKFILL_SOURCE_TABLE": "ledger_entries_legacy",
            },
        ),
    ]
    for done in ran:
        assert done.returncode == 0, output(done)[-3000:]
        outputs.append(output(done))
    for form in forms.values():
        done = status({**env, "DATABASE_URL": form})
        assert done.returncode == 0, output(done)
        outputs.append(output(done))

    with psycopg.connect(database_url) as conn:
        days = conn.execute(
            "SELECT partition_key, source_type, status FROM ledger_backfill_checkpoints ORDER BY 1"
        ).fetchall()
    assert [(d, t) for d, t, _ in days] == [
        ("2024-01-01", "CSV"),
        ("2024-01-02", "CSV"),
        ("2024-01-03", "DATABASE"),
    ]
    assert {s for _, _, s in days} == {"COMPLETED"}
    assert_nothing_of(SPECIAL, "\n".join(outputs), "command output")
    assert_nothing_of(SPECIAL, files_text(special_env["home"]), "DAGSTER_HOME (compute logs)")
    assert_nothing_of(SPECIAL, files_text(tmp_path / "state"), "reports and staged files")
    everything = database_text(database_url)
    assert "ASSET_MATERIALIZATION" in everything  # Dagster's event log is in it, and searched
    assert_nothing_of(SPECIAL, everything, "the database (ledger, Dagster runs and events)")


MALFORMED = {
    "every special character raw": SPECIAL,
    "a literal %": "Kx9fQe%zzQm7dRw",
    "an unescaped @": "Kx9fQe@Qm7dRw",
    "a raw /": "Kx9fQe/Qm7dRw#Zv2pXo",
    "a raw space": "Kx9fQe Qm7dRw",
}


@pytest.mark.slow
def test_a_malformed_url_fails_clearly_and_shows_nothing(
    special_env: dict, database_url: str, tmp_path: Path
) -> None:
    env, url = special_env["env"], special_env["url"]
    outputs = []
    cases: list[tuple[str, dict[str, str]]] = [
        ("DATABASE_URL", {"DATABASE_URL": raw_form(url, raw)}) for raw in MALFORMED.values()
    ]
    cases += [
        ("DATABASE_URL", {"DATABASE_URL": f"host=127.0.0.1 password={MALFORMED['a raw space']}"}),
        ("DAGSTER_PG_URL", {"DAGSTER_PG_URL": raw_form(url, SPECIAL)}),
        (
            "BACKFILL_SOURCE_URL",
            {"BACKFILL_SOURCE_TYPE": "DATABASE", "BACKFILL_SOURCE_URL": raw_form(url, SPECIAL)},
        ),
        ("BACKFILL_API_TOKEN", {"BACKFILL_API_TOKEN": API_TOKEN}),
    ]
    for setting, change in cases:
        done = materialize("2024-01-01", {**env, **change})
        assert done.returncode != 0
        assert f"{setting} " in done.stderr and "is malformed" in done.stderr, done.stderr[-2000:]
        outputs.append(output(done))
        if setting == "DATABASE_URL":
            done = status({**env, **change})
            assert done.returncode == 2
            assert "configuration error: DATABASE_URL" in done.stderr, done.stderr
            outputs.append(output(done))
    everything = "\n".join(outputs)
    assert "Traceback" in everything  # the failure is reported, only without the value
    for raw in MALFORMED.values():
        assert_nothing_of(raw, everything, "command output")
        assert_nothing_of(raw, files_text(special_env["home"]), "DAGSTER_HOME")
        assert_nothing_of(raw, database_text(database_url), "the database")
    assert "Gh4kLm9p" not in everything


@pytest.mark.slow
def test_a_database_error_during_a_run_shows_no_password(special_env: dict) -> None:
    """A well-formed URL to a server that does not answer: psycopg's connection error reaches
    the step failure, Dagster's event log and compute logs, with no password in it."""
    env, forms = special_env["env"], written_forms(special_env["url"])
    storage = forms["url"]  # Dagster's own storage stays reachable
    unreachable = re.sub(r"@[^/]*/", "@127.0.0.1:1/", forms["url"])
    if "?host=" in unreachable:  # a socket directory: point it at a missing one
        unreachable = re.sub(r"\?host=[^&]*", "?host=/nonexistent", unreachable)
    done = materialize(
        "2024-01-01",
        {**env, "DAGSTER_PG_URL": storage, "DATABASE_URL": unreachable, "MAX_RETRIES": "0"},
    )
    assert done.returncode != 0
    assert "connection" in output(done).lower()
    assert_nothing_of(SPECIAL, output(done), "a failed run's output")
    assert_nothing_of(SPECIAL, files_text(special_env["home"]), "a failed run's compute logs")
    with psycopg.connect(storage) as conn:
        events = conn.execute("SELECT event FROM event_logs").fetchall()
    assert events and "STEP_FAILURE" in str(events)
    assert_nothing_of(SPECIAL, str(events), "a failed run's event log")
