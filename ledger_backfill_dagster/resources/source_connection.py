"""Where a DATABASE, API or SCB source lives, and the secret needed to read it.

Both values are secrets (a database URL carries a password; an API token is a credential), so
they reach the resource only as `dg.EnvVar` references: Dagster resolves them inside the run and
shows the variable's name, never its value. Nothing here is logged; error messages that could
contain the URL go through `redact()`. `from_env` checks the values it refers to (a malformed URL
or token fails when the code location loads, showing nothing past the scheme: see redaction.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import dagster as dg
from pydantic import Field

from ledger_backfill_dagster.lib.redaction import check_http_url, check_source_url, check_token

SOURCE_URL_ENV = "BACKFILL_SOURCE_URL"
API_TOKEN_ENV = "BACKFILL_API_TOKEN"
OUTBOX_URL_ENV = "OUTBOX_RELAY_URL"
OUTBOX_TOKEN_ENV = "OUTBOX_RELAY_TOKEN"


def _env_vars(fields: dict[str, tuple[str, Callable[[str, str], object]]]) -> dict[str, dg.EnvVar]:
    """EnvVar references for the fields whose variable is set, each value checked first: a
    malformed one fails when the code location loads, with a message that never shows it."""
    values: dict[str, dg.EnvVar] = {}
    for field, (variable, check) in fields.items():
        raw = os.environ.get(variable, "")
        if raw.strip():
            check(variable, raw)
            values[field] = dg.EnvVar(variable)
    return values


class SourceConnection(dg.ConfigurableResource):
    """BACKFILL_SOURCE_URL (a PostgreSQL URL or an API base URL) and BACKFILL_API_TOKEN."""

    url: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_URL, given as an EnvVar: a database URL or an API base URL.",
    )
    api_token: str | None = Field(
        default=None,
        description="BACKFILL_API_TOKEN, given as an EnvVar: the bearer token of an API source.",
    )

    @classmethod
    def from_env(cls) -> SourceConnection | None:
        """EnvVar references for the variables that are set; None when neither is."""
        values = _env_vars(
            {"url": (SOURCE_URL_ENV, check_source_url), "api_token": (API_TOKEN_ENV, check_token)}
        )
        return cls(**values) if values else None


class OutboxEndpoint(dg.ConfigurableResource):
    """Where the outbox relay delivers dual-ledger entries: OUTBOX_RELAY_URL (+ _TOKEN)."""

    url: str | None = Field(
        default=None, description="OUTBOX_RELAY_URL, given as an EnvVar: the receiving endpoint."
    )
    token: str | None = Field(
        default=None, description="OUTBOX_RELAY_TOKEN, given as an EnvVar: its bearer token."
    )

    @classmethod
    def from_env(cls) -> OutboxEndpoint:
        return cls(
            **_env_vars(
                {"url": (OUTBOX_URL_ENV, check_http_url), "token": (OUTBOX_TOKEN_ENV, check_token)}
            )
        )
