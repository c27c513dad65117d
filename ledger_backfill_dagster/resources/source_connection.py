"""Where a DATABASE, API or SCB source lives, and the secret needed to read it.

Both values are secrets (a database URL carries a password; an API token is a credential), so
they reach the resource only as `dg.EnvVar` references: Dagster resolves them inside the run and
shows the variable's name, never its value. Nothing here is logged; error messages that could
contain the URL go through `redact()`. `from_env` checks the values it refers to (a malformed URL
or token fails when the code location loads, showing nothing past the scheme: see redaction.py).
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from ledger_backfill_dagster.lib.redaction import check_http_url, check_source_url, check_token

SOURCE_URL_ENV = "BACKFILL_SOURCE_URL"
API_TOKEN_ENV = "BACKFILL_API_TOKEN"
OUTBOX_URL_ENV = "OUTBOX_RELAY_URL"
OUTBOX_TOKEN_ENV = "OUTBOX_RELAY_TOKEN"


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
        values: dict[str, dg.EnvVar] = {}
        if os.environ.get(SOURCE_URL_ENV, "").strip():
            check_source_url(SOURCE_URL_ENV, os.environ[SOURCE_URL_ENV])
            values["url"] = dg.EnvVar(SOURCE_URL_ENV)
        if os.environ.get(API_TOKEN_ENV, "").strip():
            check_token(API_TOKEN_ENV, os.environ[API_TOKEN_ENV])
            values["api_token"] = dg.EnvVar(API_TOKEN_ENV)
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
        values: dict[str, dg.EnvVar] = {}
        if os.environ.get(OUTBOX_URL_ENV, "").strip():
            check_http_url(OUTBOX_URL_ENV, os.environ[OUTBOX_URL_ENV])
            values["url"] = dg.EnvVar(OUTBOX_URL_ENV)
        if os.environ.get(OUTBOX_TOKEN_ENV, "").strip():
            check_token(OUTBOX_TOKEN_ENV, os.environ[OUTBOX_TOKEN_ENV])
            values["token"] = dg.EnvVar(OUTBOX_TOKEN_ENV)
        return cls(**values)
