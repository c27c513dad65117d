"""One error hierarchy: every failure the product names is transient or terminal.

Retries read the distinction through `is_transient` and nothing else: the posting loop and the
DATABASE source retry a transient failure with backoff, the HTTP client retries its page, and a
terminal failure stops at once, naming the row, file or setting it concerns. A foreign exception
(psycopg's) is classified by its SQLSTATE.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import errors as pgerrors
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)


class BackfillError(Exception):
    """A failure the product names; `transient` says whether the same call may succeed later."""

    transient = False


class TerminalError(BackfillError):
    """Retrying cannot help: the input, the configuration or the ledger's state must change."""


class TransientError(BackfillError):
    """The same call may succeed later: a lost connection, a busy or restarting server."""

    transient = True


class InputError(TerminalError, ValueError):
    """A source, file or row the backfill cannot read as given; the message names it."""


class SettingsError(TerminalError, ValueError):
    """An environment variable or run config value the backfill cannot use."""


TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown (server restart)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up)
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",  # connection exceptions
    "53300",  # too_many_connections
}


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the call that raised `exc` may succeed."""
    if isinstance(exc, BackfillError):
        return exc.transient
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate in TRANSIENT_SQLSTATES
    if isinstance(exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected):
        return True
    return getattr(exc, "sqlstate", None) in TRANSIENT_SQLSTATES


def transient_retrying(
    max_retries: int, retry_delay_ms: int, before_sleep: Callable[[RetryCallState], None]
) -> Retrying:
    """The one retry policy for database work (posting, the DATABASE source): `max_retries`
    more attempts after a transient error, with exponential backoff from `retry_delay_ms`;
    `before_sleep` notes the retry and closes what the failed attempt held. Anything else, or
    the last failure, is raised."""
    delay = retry_delay_ms / 1000
    return Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(max_retries + 1),
        wait=wait_exponential_jitter(initial=delay, max=max(delay * 16, 1), jitter=delay / 2),
        before_sleep=before_sleep,
        reraise=True,
    )
