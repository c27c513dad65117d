"""One error hierarchy: every failure the product names is transient or terminal.

Retries read the distinction through `is_transient` and nothing else: the posting loop and the
DATABASE source retry a transient failure with backoff, the HTTP client retries its page, and a
terminal failure stops at once, naming the row, file or setting it concerns. A foreign exception
(psycopg's) is classified by its SQLSTATE.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerrors


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
