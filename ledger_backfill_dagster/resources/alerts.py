"""Alert webhooks, each off until its variable is set.

- `ALERT_WEBHOOK_URL` (resource `alerts`, `AlertHook`): every failure a person must act on
  (defs/operations/alerts.py: failed or canceled runs, failed checks, outbox rows FAILED,
  entries without an outbox row, stalled partitions).
- `STALL_ALERT_WEBHOOK_URL` (resource `stall_alerts`, `StallAlertHook`): stalled partitions
  only, as before ALERT_WEBHOOK_URL existed; it keeps working beside it.

Each is a Slack incoming webhook, or any endpoint that accepts `{"text": ...}` JSON (e.g. an
e-mail relay). The URL is a secret (Slack's carry a token): it reaches the sensor through
`dg.EnvVar` and is never logged; failures are reported without it.
"""

from __future__ import annotations

import os

import dagster as dg
import httpx
from pydantic import Field

from ledger_backfill_dagster.lib.errors import TransientError
from ledger_backfill_dagster.lib.redaction import redact

WEBHOOK_URL_ENV = "STALL_ALERT_WEBHOOK_URL"
ALERT_WEBHOOK_URL_ENV = "ALERT_WEBHOOK_URL"


class AlertDeliveryError(TransientError, RuntimeError):
    """The webhook did not accept the alert (the message never contains the URL)."""


class StallAlertHook(dg.ConfigurableResource):
    """Where stalled-backfill alerts go besides the UI: a webhook, off unless configured.

    Slack: create an incoming webhook and set STALL_ALERT_WEBHOOK_URL to it. E-mail: point it at
    any relay that accepts `{"text": ...}` JSON, or use Dagster's own e-mail sensors.
    """

    webhook_url: str | None = Field(
        default=None,
        description="STALL_ALERT_WEBHOOK_URL, given as an EnvVar (a secret). Unset: no alert leaves the UI.",
    )
    timeout_seconds: float = Field(default=10.0)

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    def send(self, text: str) -> bool:
        """POST `{"text": text}`; returns False when the hook is off. Never shows the URL."""
        if not self.webhook_url:
            return False
        try:
            response = httpx.post(
                self.webhook_url, json={"text": text}, timeout=self.timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise AlertDeliveryError(f"alert webhook unreachable: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise AlertDeliveryError(f"alert webhook answered HTTP {response.status_code}")
        return True

    @classmethod
    def from_env(cls) -> StallAlertHook:
        """The hook for the code location: the URL stays an EnvVar reference, resolved in the
        daemon (only whether it is set is read here)."""
        if os.environ.get(WEBHOOK_URL_ENV):
            return cls(webhook_url=dg.EnvVar(WEBHOOK_URL_ENV))
        return cls()


class AlertHook(StallAlertHook):
    """Where every alert goes besides the UI (ALERT_WEBHOOK_URL): the same webhook contract as
    the stall hook, for all the alerts of defs/operations/alerts.py."""

    webhook_url: str | None = Field(
        default=None,
        description="ALERT_WEBHOOK_URL, given as an EnvVar (a secret). Unset: no alert leaves the UI.",
    )

    @classmethod
    def from_env(cls) -> AlertHook:
        if os.environ.get(ALERT_WEBHOOK_URL_ENV):
            return cls(webhook_url=dg.EnvVar(ALERT_WEBHOOK_URL_ENV))
        return cls()


def safe_error(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")
