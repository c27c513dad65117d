"""The backfill's configuration: the seed's environment variables, parsed once, with defaults.

Secrets (DATABASE_URL, API tokens) are not read here: they reach resources through `dg.EnvVar`
so Dagster never stores or shows their values. They are only checked here, when the code location
loads, so a malformed URL fails at once with a message that shows nothing past its scheme
(`redaction.check_secret_settings`).

Every numeric setting has a range (NUMERIC_LIMITS): a value outside it fails here, naming the
variable, instead of deep inside pyarrow or PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field, ValidationInfo, field_validator

from ledger_backfill_dagster.lib.env import (
    check_range,
    env_bool,
    env_float,
    env_int,
    env_path,
    env_str,
    state_home,
)
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.redaction import check_secret_settings
from ledger_backfill_dagster.resources.source_connection import SourceConnection

DEFAULT_STALL_SECONDS = 3600


def stall_threshold_seconds() -> int:
    """STALL_THRESHOLD_SECONDS, default 3600 (the seed's one hour)."""
    return env_int("STALL_THRESHOLD_SECONDS", DEFAULT_STALL_SECONDS, minimum=1)


# BackfillSettings' numeric fields and the variables that set them.
FIELD_SETTINGS = {
    "batch_size": "BATCH_SIZE",
    "checkpoint_interval": "CHECKPOINT_INTERVAL",
    "max_retries": "MAX_RETRIES",
    "retry_delay_ms": "RETRY_DELAY",
    "parallel_workers": "PARALLEL_WORKERS",
    "source_page_size": "BACKFILL_SOURCE_PAGE_SIZE",
    "source_timeout_seconds": "BACKFILL_SOURCE_TIMEOUT",
    "source_max_retries": "BACKFILL_SOURCE_MAX_RETRIES",
    "source_max_retry_after": "BACKFILL_SOURCE_MAX_RETRY_AFTER",
}


class BackfillSettings(dg.ConfigurableResource):
    """Knobs of the seed's BackfillConfig and CSV script, plus the ones our issues add.

    Defaults come from the environment when the code location loads (`from_env`); every field can
    be overridden per run in the launchpad. None of them is a secret.
    """

    source_type: str = Field(
        default="CSV", description="BACKFILL_SOURCE_TYPE: CSV, DATABASE, API or SCB."
    )
    source_file: str | None = Field(
        default=None, description="BACKFILL_SOURCE_FILE: a CSV file, folder or glob."
    )
    source_id: str | None = Field(
        default=None,
        description="BACKFILL_SOURCE_ID: names the source in checkpoints and lineage; defaults to the resolved file path.",
    )
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
    column_map_file: str | None = Field(
        default=None,
        description="COLUMN_MAP_FILE: JSON {sourceColumn: canonicalField} for other layouts.",
    )
    ledger_id: str = Field(
        default="MASTER", description="LEDGER_ID: ledger for rows with an empty ledgerId."
    )
    batch_size: int = Field(
        default=1000, description="BATCH_SIZE: entries per posting transaction."
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
    source_timezone: str = Field(
        default="UTC", description="SOURCE_TIMEZONE: zone of timestamps without an offset."
    )
    reports_dir: str = Field(
        default="", description="REPORTS_DIR: where reconciliation and error reports are written."
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

    @field_validator(*FIELD_SETTINGS)
    @classmethod
    def _number_in_range(cls, value: float, info: ValidationInfo) -> float:
        """The same ranges for values given in the launchpad as for the environment's (a field
        validator: pydantic's message then quotes this field's value, not the whole config)."""
        check_range(FIELD_SETTINGS[str(info.field_name)], value)
        return value

    @property
    def reports_path(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else state_home() / "reports"

    @classmethod
    def from_env(cls) -> BackfillSettings:
        check_secret_settings()
        source_type = env_str("BACKFILL_SOURCE_TYPE", "CSV").upper()
        if source_type not in {"CSV", "DATABASE", "API", "SCB"}:
            raise SettingsError(
                f"BACKFILL_SOURCE_TYPE must be CSV, DATABASE, API or SCB, got {source_type!r}"
            )
        return cls(
            source_type=source_type,
            source_file=env_path("BACKFILL_SOURCE_FILE"),
            source_id=os.environ.get("BACKFILL_SOURCE_ID") or None,
            accounts_file=env_path("ACCOUNTS_FILE"),
            account_map_file=env_path("ACCOUNT_MAP_FILE"),
            transaction_type_map_file=env_path("TRANSACTION_TYPE_MAP_FILE"),
            column_map_file=env_path("COLUMN_MAP_FILE"),
            ledger_id=env_str("LEDGER_ID", "MASTER"),
            batch_size=env_int("BATCH_SIZE", 1000),
            checkpoint_interval=env_int("CHECKPOINT_INTERVAL", 10),
            max_retries=env_int("MAX_RETRIES", 3),
            retry_delay_ms=env_int("RETRY_DELAY", 1000),
            parallel_workers=env_int("PARALLEL_WORKERS", 1),
            skip_duplicates=env_bool("SKIP_DUPLICATES", True),
            validate_balances=env_bool("VALIDATE_BALANCES", True),
            force_redo=env_bool("FORCE_REDO", False),
            source_timezone=env_str("SOURCE_TIMEZONE", "UTC"),
            reports_dir=env_str("REPORTS_DIR", ""),
            connection=SourceConnection.from_env(),
            source_table=os.environ.get("BACKFILL_SOURCE_TABLE", "").strip() or None,
            source_query=os.environ.get("BACKFILL_SOURCE_QUERY", "").strip() or None,
            source_id_column=env_str("BACKFILL_SOURCE_ID_COLUMN", "id"),
            source_timestamp_column=os.environ.get("BACKFILL_SOURCE_TIMESTAMP_COLUMN", "").strip()
            or None,
            source_column_map=os.environ.get("BACKFILL_SOURCE_COLUMN_MAP", "").strip() or None,
            scb_sovereign_bank_id=os.environ.get("SCB_SOVEREIGN_BANK_ID", "").strip() or None,
            source_page_size=env_int("BACKFILL_SOURCE_PAGE_SIZE", 5000),
            source_timeout_seconds=env_float("BACKFILL_SOURCE_TIMEOUT", 30.0),
            source_max_retries=env_int("BACKFILL_SOURCE_MAX_RETRIES", 5),
            source_max_retry_after=env_float("BACKFILL_SOURCE_MAX_RETRY_AFTER", 120.0),
        )
