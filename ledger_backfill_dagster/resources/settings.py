"""The backfill's configuration: four resources, one per concern, each parsed from the environment.

    source      what is read and how: the source's type, file or table, its columns, the time
                zone of its timestamps, paging, timeouts and retries, its URL and token
    transform   the rules of the transform stage: chart of accounts, account and transaction
                type maps, the default ledger
    posting     how entries are posted: batch size, checkpoints, retries, parallel partitions
    monitoring  how a backfill is watched: stall threshold, sensor interval, reports folder

Each resource's `from_env()` reads the same variables, with the same defaults, as the single
`settings` resource did before issue 14 (docs/operations.md maps every old key to its new place).
Every field is validated the same way whether it comes from the environment or from a launchpad
override: a numeric field must lie in its variable's range (`lib.env.NUMERIC_LIMITS`), the source
type is one of four (a `Literal`, so Dagster refuses any other before the run starts). A value
out of range fails naming the field as the launchpad spells it and the variable, e.g.
`posting.batch_size: BATCH_SIZE must be from 1 to 1,000,000, got 0`.

The option objects the backfill's code takes are built from a resource in one place each:
`SourceSettings.reader()`, `TransformSettings.rules()`, `PostingSettings.options()`.

Where the source time zone belongs: `source`. SOURCE_TIMEZONE says which day a timestamp without
an offset falls on, and the readers apply it while extracting (it places rows in partitions and
is part of the extract's fingerprint); the transform stage only sees UTC timestamps. The column
map file belongs to `source` for the same reason: the readers apply it, and
BACKFILL_SOURCE_COLUMN_MAP, inline, is the same knob (it wins over COLUMN_MAP_FILE).

Secrets (DATABASE_URL, API tokens) are not read here: they reach resources through `dg.EnvVar`
so Dagster never stores or shows their values (`SourceConnection`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal, get_args

import dagster as dg
from pydantic import Field, ValidationInfo, field_validator

from ledger_backfill_dagster.entries.transform import TransformRules, load_mapping
from ledger_backfill_dagster.ledger.posting import PostingOptions
from ledger_backfill_dagster.ledger.reject_guard import (
    DEFAULT_MAX_REJECT_RATIO,
    DEFAULT_MIN_ROWS,
    RejectGuard,
    parse_ratio,
)
from ledger_backfill_dagster.lib.env import (
    NUMERIC_LIMITS,
    check_range,
    env_bool,
    env_float,
    env_int,
    env_path,
    env_str,
    state_home,
)
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.resources.source_connection import SourceConnection
from ledger_backfill_dagster.resources.source_registry import make_source
from ledger_backfill_dagster.sources.base import SourceReader

SourceType = Literal["CSV", "DATABASE", "API", "SCB"]
LoadMode = Literal["auto", "live", "initial"]
SOURCE_TYPES: tuple[str, ...] = get_args(SourceType)
DEFAULT_STALL_SECONDS = 3600
DEFAULT_SENSOR_INTERVAL_SECONDS = 60


def _load_mode(value: str) -> LoadMode:
    mode = value.strip().lower()
    if mode not in get_args(LoadMode):
        raise SettingsError(f"LOAD_MODE must be auto, live or initial, got {value!r}")
    return mode  # type: ignore[return-value]


def _optional(name: str) -> str | None:
    """A text variable whose absence means "not given" (blank counts as absent)."""
    return os.environ.get(name, "").strip() or None


class EnvSettings(dg.ConfigurableResource):
    """A settings resource: `KEY` is its resource key, `ENV` maps each field to its variable.

    A numeric field whose variable has a range (NUMERIC_LIMITS) is checked against it however the
    value arrives: from the environment, or as a launchpad override (a field validator, so
    pydantic's message is about this field, not the whole config).
    """

    KEY: ClassVar[str] = ""
    ENV: ClassVar[dict[str, str]] = {}

    @field_validator("*")
    @classmethod
    def _number_in_range(cls, value: object, info: ValidationInfo) -> object:
        variable = cls.ENV.get(str(info.field_name), "")
        if (
            variable in NUMERIC_LIMITS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            try:
                check_range(variable, value)
            except SettingsError as exc:
                raise SettingsError(f"{cls.KEY}.{info.field_name}: {exc}") from None
        return value


class SourceSettings(EnvSettings):
    """What the backfill reads and how (resource key `source`). None of these is a secret: the
    URL and token live in `connection`, as EnvVars."""

    KEY: ClassVar[str] = "source"
    ENV: ClassVar[dict[str, str]] = {
        "source_type": "BACKFILL_SOURCE_TYPE",
        "source_file": "BACKFILL_SOURCE_FILE",
        "source_id": "BACKFILL_SOURCE_ID",
        "source_timezone": "SOURCE_TIMEZONE",
        "column_map_file": "COLUMN_MAP_FILE",
        "source_table": "BACKFILL_SOURCE_TABLE",
        "source_query": "BACKFILL_SOURCE_QUERY",
        "source_id_column": "BACKFILL_SOURCE_ID_COLUMN",
        "source_timestamp_column": "BACKFILL_SOURCE_TIMESTAMP_COLUMN",
        "source_column_map": "BACKFILL_SOURCE_COLUMN_MAP",
        "scb_sovereign_bank_id": "SCB_SOVEREIGN_BANK_ID",
        "source_page_size": "BACKFILL_SOURCE_PAGE_SIZE",
        "source_timeout_seconds": "BACKFILL_SOURCE_TIMEOUT",
        "source_max_retries": "BACKFILL_SOURCE_MAX_RETRIES",
        "source_max_retry_after": "BACKFILL_SOURCE_MAX_RETRY_AFTER",
        "retry_delay_ms": "RETRY_DELAY",
    }

    source_type: SourceType = Field(
        default="CSV", description="BACKFILL_SOURCE_TYPE: CSV, DATABASE, API or SCB."
    )
    source_file: str | None = Field(
        default=None, description="BACKFILL_SOURCE_FILE: a CSV file, folder or glob."
    )
    source_id: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_ID: names the source in checkpoints and lineage; defaults to the resolved file path.",
    )
    source_timezone: str = Field(
        default="UTC",
        description="SOURCE_TIMEZONE: zone of timestamps without an offset (places rows in days).",
    )
    column_map_file: str | None = Field(
        default=None,
        description="COLUMN_MAP_FILE: JSON {sourceColumn: canonicalField} for other layouts.",
    )
    # Sources other than CSV (issue 5; docs/sources.md). Their URL and token are secrets and live
    # in `connection`, resolved from BACKFILL_SOURCE_URL / BACKFILL_API_TOKEN through dg.EnvVar.
    connection: SourceConnection | None = Field(
        default=None,
        description="Where a DATABASE, API or SCB source is (URL and token given as EnvVars).",
    )
    source_table: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_TABLE: the DATABASE source's table (schema.table allowed).",
    )
    source_query: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_QUERY: a SELECT to read instead of a table (DATABASE).",
    )
    source_id_column: str = Field(
        default="id",
        description="BACKFILL_SOURCE_ID_COLUMN: the DATABASE source's integer key (keyset order).",
    )
    source_timestamp_column: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_TIMESTAMP_COLUMN: the column that places a row in a day; "
        "defaults to the column mapped to timestampUtc.",
    )
    source_column_map: str | None = Field(
        default=None,
        description='BACKFILL_SOURCE_COLUMN_MAP: inline JSON {"sourceColumn": "canonicalField"} '
        "(DATABASE and API; wins over COLUMN_MAP_FILE).",
    )
    scb_sovereign_bank_id: str | None = Field(
        default=None, description="SCB_SOVEREIGN_BANK_ID: whose ledger an SCB source reads."
    )
    source_page_size: int = Field(
        default=5000,
        description="BACKFILL_SOURCE_PAGE_SIZE: rows per database fetch or API page.",
    )
    source_timeout_seconds: float = Field(
        default=30.0, description="BACKFILL_SOURCE_TIMEOUT: seconds per request or connect."
    )
    source_max_retries: int = Field(
        default=5,
        description="BACKFILL_SOURCE_MAX_RETRIES: retries of a page on a transient error.",
    )
    source_max_retry_after: float = Field(
        default=120.0,
        description="BACKFILL_SOURCE_MAX_RETRY_AFTER: longest Retry-After honoured, in seconds.",
    )
    # RETRY_DELAY sets this and posting.retry_delay_ms: the same first delay for a source's page
    # (and the outbox relay's request) as for a posting batch, each overridable on its own.
    retry_delay_ms: int = Field(
        default=1000,
        description="RETRY_DELAY: first retry delay of a page or request in ms, doubled each "
        "retry.",
    )

    def reader(self) -> SourceReader:
        """The Source Reader these settings describe (SettingsError when they describe none)."""
        return make_source(self)

    @classmethod
    def from_env(cls) -> SourceSettings:
        source_type = env_str("BACKFILL_SOURCE_TYPE", "CSV").upper()
        if source_type not in SOURCE_TYPES:
            raise SettingsError(
                f"BACKFILL_SOURCE_TYPE must be CSV, DATABASE, API or SCB, got {source_type!r}"
            )
        return cls(
            source_type=source_type,  # type: ignore[arg-type]  # checked above
            source_file=env_path("BACKFILL_SOURCE_FILE"),
            source_id=os.environ.get("BACKFILL_SOURCE_ID") or None,
            source_timezone=env_str("SOURCE_TIMEZONE", "UTC"),
            column_map_file=env_path("COLUMN_MAP_FILE"),
            connection=SourceConnection.from_env(),
            source_table=_optional("BACKFILL_SOURCE_TABLE"),
            source_query=_optional("BACKFILL_SOURCE_QUERY"),
            source_id_column=env_str("BACKFILL_SOURCE_ID_COLUMN", "id"),
            source_timestamp_column=_optional("BACKFILL_SOURCE_TIMESTAMP_COLUMN"),
            source_column_map=_optional("BACKFILL_SOURCE_COLUMN_MAP"),
            scb_sovereign_bank_id=_optional("SCB_SOVEREIGN_BANK_ID"),
            source_page_size=env_int("BACKFILL_SOURCE_PAGE_SIZE", 5000),
            source_timeout_seconds=env_float("BACKFILL_SOURCE_TIMEOUT", 30.0),
            source_max_retries=env_int("BACKFILL_SOURCE_MAX_RETRIES", 5),
            source_max_retry_after=env_float("BACKFILL_SOURCE_MAX_RETRY_AFTER", 120.0),
            retry_delay_ms=env_int("RETRY_DELAY", 1000),
        )


class TransformSettings(EnvSettings):
    """The transform stage's rules (resource key `transform`): the files it loads and the ledger
    of rows that name none."""

    KEY: ClassVar[str] = "transform"
    ENV: ClassVar[dict[str, str]] = {
        "accounts_file": "ACCOUNTS_FILE",
        "account_map_file": "ACCOUNT_MAP_FILE",
        "transaction_type_map_file": "TRANSACTION_TYPE_MAP_FILE",
        "ledger_id": "LEDGER_ID",
    }

    accounts_file: str | None = Field(
        default=None,
        description="ACCOUNTS_FILE: chart of accounts CSV (accountId,currencyCode[,allowNegative]).",
    )
    account_map_file: str | None = Field(
        default=None, description="ACCOUNT_MAP_FILE: CSV sourceId,ledgerAccountId."
    )
    transaction_type_map_file: str | None = Field(
        default=None, description="TRANSACTION_TYPE_MAP_FILE: CSV sourceType,ledgerType."
    )
    ledger_id: str = Field(
        default="MASTER", description="LEDGER_ID: ledger for rows with an empty ledgerId."
    )

    def rules(self, account_currencies: dict[str, str]) -> TransformRules:
        """The transform's rules: these settings' maps (read now: a bad file fails naming its
        variable and line) and the ledger's accounts with their currencies."""
        return TransformRules(
            default_ledger_id=self.ledger_id,
            account_map=load_mapping(self.account_map_file, "ACCOUNT_MAP_FILE"),
            transaction_type_map=load_mapping(
                self.transaction_type_map_file, "TRANSACTION_TYPE_MAP_FILE"
            ),
            account_currencies=account_currencies,
        )

    @classmethod
    def from_env(cls) -> TransformSettings:
        return cls(
            accounts_file=env_path("ACCOUNTS_FILE"),
            account_map_file=env_path("ACCOUNT_MAP_FILE"),
            transaction_type_map_file=env_path("TRANSACTION_TYPE_MAP_FILE"),
            ledger_id=env_str("LEDGER_ID", "MASTER"),
        )


class PostingSettings(EnvSettings):
    """How validated entries are posted (resource key `posting`)."""

    KEY: ClassVar[str] = "posting"
    ENV: ClassVar[dict[str, str]] = {
        "batch_size": "BATCH_SIZE",
        "checkpoint_interval": "CHECKPOINT_INTERVAL",
        "max_retries": "MAX_RETRIES",
        "retry_delay_ms": "RETRY_DELAY",
        "parallel_workers": "PARALLEL_WORKERS",
        "skip_duplicates": "SKIP_DUPLICATES",
        "validate_balances": "VALIDATE_BALANCES",
        "force_redo": "FORCE_REDO",
        "load_mode": "LOAD_MODE",
        "max_reject_ratio": "MAX_REJECT_RATIO",
        "reject_guard_min_rows": "REJECT_GUARD_MIN_ROWS",
    }

    batch_size: int = Field(
        default=10_000, description="BATCH_SIZE: entries per posting transaction."
    )
    checkpoint_interval: int = Field(
        default=10, description="CHECKPOINT_INTERVAL: validate touched balances every N batches."
    )
    max_retries: int = Field(
        default=3, description="MAX_RETRIES: retries of a batch on a transient database error."
    )
    retry_delay_ms: int = Field(
        default=1000, description="RETRY_DELAY: first retry delay in ms, doubled each retry."
    )
    parallel_workers: int = Field(
        default=1, description="PARALLEL_WORKERS: partitions posted at once within a run."
    )
    skip_duplicates: bool = Field(
        default=True,
        description="SKIP_DUPLICATES: skip identical repeats (true) or fail naming them (false).",
    )
    validate_balances: bool = Field(
        default=True,
        description="VALIDATE_BALANCES: check touched balances against their entries during the run.",
    )
    force_redo: bool = Field(
        default=False,
        description="FORCE_REDO: re-process partitions whose checkpoint is COMPLETED.",
    )

    load_mode: LoadMode = Field(
        default="auto",
        description="LOAD_MODE: auto (initial into an empty ledger, else live), live, or initial "
        "(secondary indexes built once after the load; refused where unsafe).",
    )
    max_reject_ratio: str = Field(
        default=DEFAULT_MAX_REJECT_RATIO,
        description="MAX_REJECT_RATIO: a partition whose rejected share of rows passes this "
        "(0 to 1) is not posted and fails the run (ledger/reject_guard.py); 1 turns it off.",
    )
    reject_guard_min_rows: int = Field(
        default=DEFAULT_MIN_ROWS,
        description="REJECT_GUARD_MIN_ROWS: partitions with fewer rows are not judged.",
    )

    @field_validator("max_reject_ratio")
    @classmethod
    def _ratio(cls, value: str) -> str:
        parse_ratio(value)
        return value.strip()

    def reject_guard(self, tags: dict[str, str]) -> RejectGuard:
        """This run's guard: the setting, or the run's override tags (with their reason)."""
        return RejectGuard.for_run(self.max_reject_ratio, self.reject_guard_min_rows, tags)

    def options(self) -> PostingOptions:
        """The posting loop's options (PARALLEL_WORKERS is the asset's: it runs the loops)."""
        return PostingOptions(
            batch_size=self.batch_size,
            skip_duplicates=self.skip_duplicates,
            validate_balances=self.validate_balances,
            checkpoint_interval=self.checkpoint_interval,
            max_retries=self.max_retries,
            retry_delay_ms=self.retry_delay_ms,
            force_redo=self.force_redo,
        )

    @classmethod
    def from_env(cls) -> PostingSettings:
        return cls(
            batch_size=env_int("BATCH_SIZE", 10_000),
            checkpoint_interval=env_int("CHECKPOINT_INTERVAL", 10),
            max_retries=env_int("MAX_RETRIES", 3),
            retry_delay_ms=env_int("RETRY_DELAY", 1000),
            parallel_workers=env_int("PARALLEL_WORKERS", 1),
            skip_duplicates=env_bool("SKIP_DUPLICATES", True),
            validate_balances=env_bool("VALIDATE_BALANCES", True),
            force_redo=env_bool("FORCE_REDO", False),
            load_mode=_load_mode(env_str("LOAD_MODE", "auto")),
            max_reject_ratio=str(
                parse_ratio(env_str("MAX_REJECT_RATIO", DEFAULT_MAX_REJECT_RATIO))
            ),
            reject_guard_min_rows=env_int("REJECT_GUARD_MIN_ROWS", DEFAULT_MIN_ROWS),
        )


class MonitoringSettings(EnvSettings):
    """How backfills are watched (resource key `monitoring`).

    The sensor's interval is read when the code location loads (it is part of the sensor's
    definition): overriding it in a run's config changes nothing.
    """

    KEY: ClassVar[str] = "monitoring"
    ENV: ClassVar[dict[str, str]] = {
        "stall_threshold_seconds": "STALL_THRESHOLD_SECONDS",
        "stall_sensor_interval_seconds": "STALL_SENSOR_INTERVAL_SECONDS",
        "reports_dir": "REPORTS_DIR",
    }

    stall_threshold_seconds: int = Field(
        default=DEFAULT_STALL_SECONDS,
        description="STALL_THRESHOLD_SECONDS: an IN_PROGRESS partition without a checkpoint for "
        "this long is stalled.",
    )
    stall_sensor_interval_seconds: int = Field(
        default=DEFAULT_SENSOR_INTERVAL_SECONDS,
        description="STALL_SENSOR_INTERVAL_SECONDS: seconds between the stall sensor's ticks "
        "(read when the code location loads).",
    )
    reports_dir: str = Field(
        default="", description="REPORTS_DIR: where reconciliation and error reports are written."
    )

    @property
    def reports_path(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else state_home() / "reports"

    @classmethod
    def from_env(cls) -> MonitoringSettings:
        return cls(
            stall_threshold_seconds=env_int("STALL_THRESHOLD_SECONDS", DEFAULT_STALL_SECONDS),
            stall_sensor_interval_seconds=env_int(
                "STALL_SENSOR_INTERVAL_SECONDS", DEFAULT_SENSOR_INTERVAL_SECONDS
            ),
            reports_dir=env_str("REPORTS_DIR", ""),
        )


SETTINGS_RESOURCES: tuple[type[EnvSettings], ...] = (
    SourceSettings,
    TransformSettings,
    PostingSettings,
    MonitoringSettings,
)


def numeric_setting(variable: str) -> tuple[type[EnvSettings], str]:
    """The resource and field a variable sets. RETRY_DELAY sets two: posting's is returned
    (resources are searched from the last, and posting comes after source)."""
    for resource in reversed(SETTINGS_RESOURCES):
        for field, name in resource.ENV.items():
            if name == variable:
                return resource, field
    raise KeyError(variable)
