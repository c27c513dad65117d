"""Secrets out of every message, and connection strings checked before any other parser sees them.

Two rules (docs/operations.md, "Credentials"):

1. A URL-bearing setting is checked when it is read (`check_postgres_url`, `check_http_url`). A
   PostgreSQL URL must mean to libpq what it says: a raw space, a `%` that starts no `%XX`, a second
   `@` or an `@` after a `/` make libpq refuse it or read part of the password as a host, port or
   database name, and libpq's own messages quote the offending part. So such a value raises
   `MalformedUrlError`, built from the variable's name, the scheme and one of a fixed set of
   reasons: nothing past the scheme, and no parser's exception attached as cause or context.
2. `redact(text)` scrubs any text that could hold a secret before it is logged, stored or shown:
   first the current values of the secret settings (their passwords raw, percent-encoded and
   decoded, and whole tokens), then whatever a URL or conninfo parser could take for credentials,
   escaped or not: a URL's user info up to the last `@` of the line, `password=` in key=value
   strings and query strings (quoted or not), bearer tokens and token-like query parameters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

from ledger_backfill_dagster.lib.errors import InputError

MASK = "***"
POSTGRES_URL_SETTINGS = ("DATABASE_URL", "DAGSTER_PG_URL")
# BACKFILL_SOURCE_URL is a PostgreSQL URL (DATABASE source) or an API base URL (API, SCB).
URL_SETTINGS = (
    *POSTGRES_URL_SETTINGS,
    "BACKFILL_SOURCE_URL",
    "OUTBOX_RELAY_URL",
    "STALL_ALERT_WEBHOOK_URL",
    "ALERT_WEBHOOK_URL",
)
# Secret as a whole: tokens, and a webhook URL (a Slack webhook's path is its credential).
WHOLE_VALUE_SETTINGS = (
    "BACKFILL_API_TOKEN",
    "OUTBOX_RELAY_TOKEN",
    "STALL_ALERT_WEBHOOK_URL",
    "ALERT_WEBHOOK_URL",
)
# A known secret shorter than this is masked only where it stands as a credential (by the
# patterns below): replacing every "ab" in a message would garble it and protect little.
MIN_LITERAL_SECRET = 4

POSTGRES_SCHEMES = ("postgresql", "postgres")
HTTP_SCHEMES = ("http", "https")


class Reason:
    """Why a URL is malformed, in words that quote nothing of it."""

    SPACE = (
        "it holds a space or other whitespace; percent-encode it in the user name, password "
        "and database name (a space is %20; in key=value form, put such a value in single quotes)"
    )
    PERCENT = "it holds a % that starts no %XX escape; write a literal % as %25"
    NUL = "it holds the escape %00, which libpq refuses"
    NOT_UTF8 = "a %XX escape in it decodes to bytes that are not UTF-8"
    AT_OR_SLASH = (
        "it holds an @ that libpq would not read as the end of the user name and password "
        "(a second @, or one after a /); percent-encode @ as %40, / as %2F, : as %3A in them"
    )
    UNCLOSED_QUOTE = "a value in single quotes in it is not closed (key=value form)"
    NOT_KEY_VALUE = (
        "it is neither a PostgreSQL URL nor key=value pairs "
        "(in key=value form, put a value with spaces in single quotes)"
    )
    UNKNOWN_OPTION = "it names a connection option libpq does not know"
    QUERY = "a query parameter in it is not key=value, or not one libpq knows"
    IPV6 = "an IPv6 host in it is not closed with ]"
    PORT = "its port is not a number"
    UNPARSEABLE = "libpq cannot parse it"
    HTTP_SCHEME = "it must be an http or https URL"
    CONTROL = "it holds a space or a control character; percent-encode it"
    NO_HOST = "it names no host"
    BRACKET = (
        "it holds a [ or ] outside an IPv6 host; percent-encode them in the user name and "
        "password (%5B, %5D)"
    )
    TOKEN = "it holds a space, a control character or a non-ASCII character"

    ALL = (
        SPACE,
        PERCENT,
        NUL,
        NOT_UTF8,
        AT_OR_SLASH,
        UNCLOSED_QUOTE,
        NOT_KEY_VALUE,
        UNKNOWN_OPTION,
        QUERY,
        IPV6,
        PORT,
        UNPARSEABLE,
        HTTP_SCHEME,
        CONTROL,
        NO_HOST,
        BRACKET,
        TOKEN,
    )


class MalformedUrlError(InputError):
    """A URL-bearing or token setting cannot be used; the message shows nothing past the scheme."""

    def __init__(self, setting: str, scheme: str | None, reason: str) -> None:
        shown = f" (a {scheme.rstrip(':')} URL)" if scheme else ""
        super().__init__(
            f"{setting}{shown} is malformed: {reason}. "
            "(Its value is not shown: it may hold a password.)"
        )
        self.setting = setting
        self.reason = reason


def shown_scheme(value: str) -> str | None:
    """`postgresql:` or `https:` when the value starts with a known scheme; else nothing (an
    unknown "scheme" could be the start of a password)."""
    match = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*):", value)
    if not match:
        return None
    scheme = match.group(1).lower()
    base = scheme.split("+", 1)[0]
    return f"{scheme}:" if base in POSTGRES_SCHEMES + HTTP_SCHEMES else None


# -- PostgreSQL connection strings ------------------------------------------------------------

_POSTGRES_URL = re.compile(r"^(?:postgres|postgresql)://")  # as libpq decides: case and all
# libpq's messages (which quote the value, so they are never shown) → our reasons.
_LIBPQ_REASONS = (
    ("unexpected spaces", Reason.SPACE),
    ("invalid percent-encoded token", Reason.PERCENT),
    ("forbidden value %00", Reason.NUL),
    ("unterminated quoted string", Reason.UNCLOSED_QUOTE),
    ('missing "=" after', Reason.NOT_KEY_VALUE),
    ("invalid connection option", Reason.UNKNOWN_OPTION),
    ("invalid uri query parameter", Reason.QUERY),
    ("missing key/value separator", Reason.QUERY),
    ("extra key/value separator", Reason.QUERY),
    ('matching "]"', Reason.IPV6),
    ("ipv6 host address may not be empty", Reason.IPV6),
)


def _libpq_reason(message: str) -> str:
    lowered = message.lower()
    for fragment, reason in _LIBPQ_REASONS:
        if fragment in lowered:
            return reason
    return Reason.UNPARSEABLE


def _misplaced_at(value: str) -> bool:
    """A second raw @, or one after a /: libpq ends the user info at the first @ or /, so part
    of the password would become a host, port or database name (and appear in its errors)."""
    rest = value.split("://", 1)[1]
    if rest.count("@") > 1:
        return True
    return "@" in rest and "/" in rest[: rest.index("@")]


def _postgres_problem(value: str) -> tuple[str | None, dict[str, str]]:
    """(reason, {}) for a malformed value, (None, libpq's reading) for a good one. Any parser
    error is turned into a reason here, so none becomes the cause or context of ours."""
    is_url = bool(_POSTGRES_URL.match(value))
    if is_url and re.search(r"\s", value.rstrip()):
        # libpq refuses a space inside a component but silently trims one at either end of it
        # (a password "pw " would become "pw"): any whitespace in a URL is refused here.
        return Reason.SPACE, {}
    if is_url and _misplaced_at(value):
        return Reason.AT_OR_SLASH, {}
    try:
        info = {k: str(v) for k, v in conninfo_to_dict(value).items() if v is not None}
    except UnicodeDecodeError:
        return Reason.NOT_UTF8, {}
    except Exception as exc:  # psycopg.ProgrammingError and kin; its text quotes the value
        return _libpq_reason(str(exc)), {}
    ports = info.get("port", "")
    if ports and not all(p.strip().isdigit() or not p.strip() for p in ports.split(",")):
        return Reason.PORT, {}
    return None, info


def check_postgres_url(setting: str, value: str) -> dict[str, str]:
    """libpq's reading of a PostgreSQL URL or key=value string ({"host": …, "password": …}),
    or MalformedUrlError naming `setting` and showing only the scheme."""
    reason, info = _postgres_problem(value)
    if reason:
        raise MalformedUrlError(setting, shown_scheme(value), reason)
    return info


# -- HTTP URLs and tokens ---------------------------------------------------------------------

_SQLALCHEMY_DRIVER = re.compile(r"^postgres(?:ql)?\+\w+://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _http_problem(value: str) -> str | None:
    if (shown_scheme(value) or "").rstrip(":") not in HTTP_SCHEMES or "://" not in value:
        return Reason.HTTP_SCHEME
    if _SPACE_OR_CONTROL.search(value.strip()):
        return Reason.CONTROL
    if _BAD_PERCENT.search(value):
        return Reason.PERCENT
    try:
        parts = urlsplit(value.strip())
    except ValueError:  # urllib's only complaint here: an unbalanced [ or ]
        return Reason.BRACKET
    outside_netloc = value.strip()[len(parts.scheme) + 3 + len(parts.netloc) :]
    if parts.netloc.count("@") > 1 or "@" in outside_netloc:
        return Reason.AT_OR_SLASH
    try:
        parts.port  # noqa: B018 - urllib checks the port when it is read
    except ValueError:
        return Reason.PORT
    if not parts.hostname:
        return Reason.NO_HOST
    return None


def check_http_url(setting: str, value: str) -> str:
    """The URL, if it is a well-formed http(s) URL; else MalformedUrlError (scheme only)."""
    reason = _http_problem(value)
    if reason:
        raise MalformedUrlError(setting, shown_scheme(value), reason)
    return value.strip()


def check_token(setting: str, value: str) -> str:
    """A bearer token must be sendable in a header: printable ASCII without spaces (else an HTTP
    library would refuse the header, quoting it)."""
    token = value.strip()
    if not token.isascii() or _SPACE_OR_CONTROL.search(token):
        raise MalformedUrlError(setting, None, Reason.TOKEN)
    return token


def without_driver(url: str) -> str:
    """`postgresql+psycopg2://…` (a SQLAlchemy URL, accepted in DAGSTER_PG_URL) → the libpq URL."""
    return _SQLALCHEMY_DRIVER.sub("postgresql://", url, count=1)


def check_source_url(setting: str, value: str) -> str:
    """BACKFILL_SOURCE_URL: an http(s) URL for API and SCB sources, else a PostgreSQL one."""
    if (shown_scheme(value) or "").rstrip(":") in HTTP_SCHEMES:
        return check_http_url(setting, value)
    check_postgres_url(setting, value)
    return value


def check_secret_settings(environ: Mapping[str, str] | None = None) -> None:
    """Check every URL-bearing and token setting that is set (MalformedUrlError at the first bad
    one). The code location calls this when it loads, so a bad value fails before any run."""
    env = os.environ if environ is None else environ
    checks: dict[str, Callable[[str, str], object]] = {
        "DATABASE_URL": check_postgres_url,
        "DAGSTER_PG_URL": lambda name, value: check_postgres_url(name, without_driver(value)),
        "BACKFILL_SOURCE_URL": check_source_url,
        "OUTBOX_RELAY_URL": check_http_url,
        "STALL_ALERT_WEBHOOK_URL": check_http_url,
        "ALERT_WEBHOOK_URL": check_http_url,
        "BACKFILL_API_TOKEN": check_token,
        "OUTBOX_RELAY_TOKEN": check_token,
    }
    for name, check in checks.items():
        value = env.get(name, "")
        if value.strip():
            check(name, value)


# -- redaction --------------------------------------------------------------------------------

# A URL's user info: from the scheme to the last @ of the line. libpq ends it at the first @,
# urllib at the last; a raw / or space in a password moves both. Taking the widest reading masks
# whatever any of them would call the password (and sometimes a little more).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\n]*)@")
_PLAIN_USER = re.compile(r"[^:@/?#\s]*")
# `password=` in a query string: the value runs to the next & (a raw space included).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:ssl)?password=)(?P<value>[^&\n]*)", re.IGNORECASE)
# `password=` in key=value form (not a query's: masked above): a quoted value (with \' escapes,
# closed or not), or a bare one up to whitespace (a backslash escapes the next character).
_CONNINFO_PASSWORD = re.compile(
    r"(?P<key>(?<![?&])\b(?:pg|ssl)?password\s*=\s*)(?P<value>'(?:[^'\\\n]|\\.)*'?|(?:\\.|\S)*)",
    re.IGNORECASE,
)
# A password in a mapping's repr or JSON: 'password': 'x'.
_MAPPING_PASSWORD = re.compile(
    r"""(?P<key>['"](?:ssl)?password['"]\s*:\s*)(?P<quote>['"])(?P<value>.*?)(?P=quote)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_TOKEN_PARAM = re.compile(
    r"(?P<key>[?&](?:access_token|token|api_?key|key|secret|sig|signature|auth)=)[^&\s]*",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    if ":" not in userinfo:
        return match[0]  # a user name alone: no password in it
    user = userinfo.split(":", 1)[0]
    shown = user if _PLAIN_USER.fullmatch(user) else ""
    return f"{match['scheme']}{shown}:{MASK}@"


def _mask_quoted(match: re.Match[str]) -> str:
    return f"{match['key']}{match['quote']}{MASK}{match['quote']}"


def redact_patterns(text: str) -> str:
    """Mask whatever a URL or conninfo parser could take for a credential (no settings read)."""
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_PASSWORD.sub(rf"\g<key>{MASK}", text)
    text = _CONNINFO_PASSWORD.sub(rf"\g<key>{MASK}", text)
    text = _MAPPING_PASSWORD.sub(_mask_quoted, text)
    text = _BEARER.sub(rf"\g<key>{MASK}", text)
    return _TOKEN_PARAM.sub(rf"\g<key>{MASK}", text)


def _spellings(secret: str) -> set[str]:
    """A secret as it may be written: raw, percent-encoded (any style) and decoded."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), unquote(secret)}


def _url_passwords(value: str) -> set[str]:
    """Every string a parser could take for the password in `value`, read every way: libpq's
    reading, the user info up to the first and up to the last @, query and key=value forms."""
    found: set[str] = set()
    reason, info = _postgres_problem(value)
    if not reason and info.get("password"):
        found.add(info["password"])
    if "://" in value:
        rest = value.split("://", 1)[1]
        for end in (rest.find("@"), rest.rfind("@")):
            if end > 0 and ":" in rest[:end]:
                found.add(rest[:end].split(":", 1)[1])
    for pattern in (_QUERY_PASSWORD, _CONNINFO_PASSWORD):
        for match in pattern.finditer(value):
            raw = match["value"]
            found.add(raw)
            if raw.startswith("'"):
                found.add(re.sub(r"\\(.)", r"\1", raw.strip("'")))
    # key=value with an unquoted value holding spaces: up to the next `word=` or the end.
    for match in re.finditer(r"password\s*=\s*(.*?)(?=\s+\w+\s*=|$)", value, re.IGNORECASE):
        found.add(match.group(1))
    return found


@lru_cache(maxsize=16)
def _known_secrets(values: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    secrets: set[str] = set()
    for name, value in values:
        if name in URL_SETTINGS:
            for password in _url_passwords(value):
                secrets |= _spellings(password)
        if name in WHOLE_VALUE_SETTINGS:
            secrets |= _spellings(value.strip())
    usable = {s for s in secrets if len(s) >= MIN_LITERAL_SECRET}
    return tuple(sorted(usable, key=len, reverse=True))  # longest first: no half-masked secret


def known_secrets() -> tuple[str, ...]:
    """The secret settings' current values, each in every spelling it may be written in."""
    names = sorted(set(URL_SETTINGS) | set(WHOLE_VALUE_SETTINGS))
    values = tuple((n, os.environ[n]) for n in names if os.environ.get(n, "").strip())
    return _known_secrets(values)


def redact(text: str) -> str:
    """Replace any password, token or credential in `text` with ***: the secret settings' values
    wherever they appear, then credentials by their place in a URL or connection string."""
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    return redact_patterns(text)
