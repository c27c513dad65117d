"""Reading the environment: each variable parsed once, with its range, naming it when wrong.

The settings resources (resources/settings.py) are built from these; nothing else reads the
environment for a setting.
"""

from __future__ import annotations

import math
import os
from datetime import date
from pathlib import Path

from ledger_backfill_dagster.lib.errors import SettingsError

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


INT32_MAX = 2**31 - 1
# Each numeric setting's range: wide enough for any real run, narrow enough that a typo (an extra
# digit or ten) fails before the run starts, naming the variable.
NUMERIC_LIMITS: dict[str, tuple[float, float]] = {
    "BATCH_SIZE": (1, 1_000_000),
    "CHECKPOINT_INTERVAL": (1, 1_000_000),
    "MAX_RETRIES": (0, 100),
    "RETRY_DELAY": (0, 600_000),  # ms: ten minutes, doubled per retry
    "PARALLEL_WORKERS": (1, 64),
    "BACKFILL_SOURCE_PAGE_SIZE": (1, 1_000_000),
    "BACKFILL_SOURCE_TIMEOUT": (0.001, 3_600),
    "BACKFILL_SOURCE_MAX_RETRIES": (0, 100),
    "BACKFILL_SOURCE_MAX_RETRY_AFTER": (0, 86_400),
    "STALL_THRESHOLD_SECONDS": (1, 31_536_000),  # a year
    "STALL_SENSOR_INTERVAL_SECONDS": (1, 86_400),
    "REJECT_GUARD_MIN_ROWS": (0, 1_000_000_000),
}


def limits(name: str, minimum: float | None, maximum: float | None) -> tuple[float, float]:
    """The range of `name`: NUMERIC_LIMITS, else what the caller says, else 0..2**31-1."""
    low, high = NUMERIC_LIMITS.get(name, (0, INT32_MAX))
    return (low if minimum is None else minimum, high if maximum is None else maximum)


def _number(value: float) -> str:
    whole = isinstance(value, int) or (math.isfinite(value) and value.is_integer())
    return f"{int(value):,}" if whole else f"{value:g}"


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")


def check_range(
    name: str, value: float, minimum: float | None = None, maximum: float | None = None
) -> None:
    low, high = limits(name, minimum, maximum)
    if not low <= value <= high:
        raise SettingsError(
            f"{name} must be from {_number(low)} to {_number(high)}, got {_number(value)}"
        )


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        low, high = limits(name, minimum, maximum)
        raise SettingsError(
            f"{name} must be a whole number from {_number(low)} to {_number(high)}, "
            f"got {_shown(raw)}"
        ) from exc
    check_range(name, value, minimum, maximum)
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def env_float(
    name: str, default: float, minimum: float | None = None, maximum: float | None = None
) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        low, high = limits(name, minimum, maximum)
        raise SettingsError(
            f"{name} must be a number from {_number(low)} to {_number(high)}, got {_shown(raw)}"
        )
    check_range(name, value, minimum, maximum)
    return value


def env_path(name: str) -> str | None:
    raw = os.environ.get(name, "").strip()
    return str(Path(raw).expanduser()) if raw else None


def state_home() -> Path:
    """Where the embedded PostgreSQL, staged Parquet and reports live (LEDGER_BACKFILL_HOME)."""
    return Path(env_str("LEDGER_BACKFILL_HOME", str(Path.cwd() / ".state"))).resolve()


def backfill_start_date() -> str:
    raw = env_str("BACKFILL_START_DATE", "2024-01-01")
    try:
        date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"BACKFILL_START_DATE must be YYYY-MM-DD, got {raw!r}") from exc
    return raw
