"""One careful HTTP client for the paged JSON sources (API, SCB) and the outbox relay.

What is transient is retried with exponential backoff and jitter: connection errors, timeouts,
5xx answers, and 429 (waiting what `Retry-After` asks, up to a cap). What is not is raised at once,
naming the page: any other 4xx (a wrong token, a wrong path) and a page that is not the JSON the
format promises. JSON numbers are read as `Decimal`, never `float`, so money stays exact.

The bearer token is sent in a header and appears in no message; URLs in messages are redacted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from ledger_backfill_dagster.lib.errors import InputError, TransientError, is_transient
from ledger_backfill_dagster.lib.redaction import redact

log = logging.getLogger(__name__)


class MalformedPageError(InputError):
    """A page arrived but is not what the page format promises. Never skipped, never retried."""

    def __init__(self, page: str, reason: str) -> None:
        super().__init__(f"{page} is malformed: {reason}")
        self.page = page
        self.reason = reason


class SourceRefusedError(InputError):
    """The server refused the request (a 4xx other than 429): retrying cannot help."""

    def __init__(self, page: str, status: int, detail: str) -> None:
        hint = " (check BACKFILL_API_TOKEN)" if status in (401, 403) else ""
        super().__init__(f"{page}: the server answered {status}{hint}: {detail}")
        self.page = page
        self.status = status


class SourceUnavailableError(TransientError, ConnectionError):
    """Transient failures outlasted every retry."""

    def __init__(self, page: str, attempts: int, last_error: str) -> None:
        super().__init__(f"{page}: still failing after {attempts} attempt(s): {last_error}")
        self.page = page
        self.attempts = attempts
        self.last_error = last_error


class _Transient(TransientError):
    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetrySettings:
    max_retries: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


class WrittenNumber(Decimal):
    """A JSON number as an exact Decimal that remembers the text it was written as (`15e-1`,
    `1500.00`): a source field then reaches the contract spelled as the source spelled it, as a
    CSV cell does, so both meet the same rule (issue 20)."""

    __slots__ = ("written",)
    written: str

    def __new__(cls, text: str) -> WrittenNumber:
        number = super().__new__(cls, text)
        number.written = text
        return number


def decimal_json(content: bytes) -> object:
    """Parse JSON with every non-integer number as an exact Decimal (a `WrittenNumber`)."""
    return json.loads(content, parse_float=WrittenNumber)


def dump_json(value: object) -> str:
    """Serialize what `decimal_json` parsed, writing Decimals back as the numbers they were."""
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else json.dumps(str(value))
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(str(k), ensure_ascii=False)}:{dump_json(v)}" for k, v in value.items()
            )
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


class JsonHttpClient:
    """GET and POST JSON with retries; one instance per extraction (it holds a connection pool)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout: float,
        retry: RetrySettings,
        user_agent: str = "ledger-backfill-dagster",
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retry = retry
        self.base_url = base_url
        self.client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )
        self.requests = 0
        self.retries = 0

    def __enter__(self) -> JsonHttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def get_json(self, path: str, params: Mapping[str, object], page: str) -> object:
        """The page's JSON document. `page` names it in every message ("API page 3 of ...")."""
        response = self._send("GET", path, page, params=params)
        try:
            return decimal_json(response.content)
        except ValueError as exc:
            snippet = response.text[:120].replace("\n", " ")
            raise MalformedPageError(page, f"not JSON ({exc}); starts with {snippet!r}") from exc

    def post_json(self, path: str, document: str, page: str, headers: Mapping[str, str]) -> int:
        """POST a JSON text; returns how many attempts it took."""
        before = self.requests
        self._send(
            "POST",
            path,
            page,
            content=document.encode(),
            headers={"Content-Type": "application/json", **headers},
        )
        return self.requests - before

    # kwargs pass through to httpx.Client.request (params=, content=, headers=) as they are
    def _send(self, method: str, path: str, page: str, **kwargs: Any) -> httpx.Response:
        attempts = 0

        def once() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            self.requests += 1
            try:
                target = path.lstrip("/") if path else self.base_url
                response = self.client.request(method, target, **kwargs)
            except httpx.TimeoutException as exc:
                raise _Transient(f"timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise _Transient(f"connection error ({type(exc).__name__}: {exc})") from exc
            status = response.status_code
            if status == 429:
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                raise _Transient("429 Too Many Requests", retry_after=wait)
            if status >= 500:
                raise _Transient(f"server error {status}")
            if status >= 400:
                raise SourceRefusedError(page, status, response.text[:200])
            if status != 200 and method == "GET":
                raise MalformedPageError(page, f"status {status}, expected 200")
            return response

        backoff = wait_exponential_jitter(
            initial=self.retry.initial_delay,
            max=self.retry.max_delay,
            jitter=self.retry.initial_delay / 2,
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, self.retry.max_retry_after)
            return backoff(state)

        def before_sleep(state: RetryCallState) -> None:
            self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s: %s; retry %d of %d in %.2f s",
                redact(page),
                exc,
                state.attempt_number,
                self.retry.max_retries,
                state.next_action.sleep if state.next_action else 0.0,
            )

        try:
            for attempt in Retrying(
                retry=retry_if_exception(is_transient),
                stop=stop_after_attempt(self.retry.max_retries + 1),
                wait=wait,
                before_sleep=before_sleep,
                reraise=True,
                sleep=time.sleep,
            ):
                with attempt:
                    return once()
        except _Transient as exc:
            raise SourceUnavailableError(redact(page), attempts, str(exc)) from exc
        raise AssertionError("unreachable")  # pragma: no cover
