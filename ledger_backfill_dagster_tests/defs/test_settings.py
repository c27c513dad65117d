"""The settings resources (issue 14): split by concern, validated, and read from the same
variables with the same defaults as the single `settings` resource they replace.

- a bad launchpad override (a batch size of 0, a source type of FTP, 1,000 parallel workers) is
  refused before any step runs, with a message naming the field;
- with no variable set, every field is its documented default, the same one the launchpad shows;
- every variable still sets its field, and docs/operations.md maps every old `settings.` key
  to its new place and its (unchanged) variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ledger_backfill_dagster.definitions import RESOURCES_FROM_ENV, build_definitions
from ledger_backfill_dagster.lib.env import NUMERIC_LIMITS
from ledger_backfill_dagster.resources.ledger_database import LedgerDatabase
from ledger_backfill_dagster.resources.settings import (
    SETTINGS_RESOURCES,
    EnvSettings,
    MonitoringSettings,
    PostingSettings,
    SourceSettings,
    TransformSettings,
)

REPO = Path(__file__).resolve().parents[2]
OPERATIONS_DOC = REPO / "docs" / "operations.md"

# The defaults before the split (BackfillSettings.from_env, stall_threshold_seconds(), sensors.py),
# by variable: none of them may change.
DEFAULTS: dict[str, object] = {
    "BACKFILL_SOURCE_TYPE": "CSV",
    "BACKFILL_SOURCE_FILE": None,
    "BACKFILL_SOURCE_ID": None,
    "SOURCE_TIMEZONE": "UTC",
    "COLUMN_MAP_FILE": None,
    "BACKFILL_SOURCE_TABLE": None,
    "BACKFILL_SOURCE_QUERY": None,
    "BACKFILL_SOURCE_ID_COLUMN": "id",
    "BACKFILL_SOURCE_TIMESTAMP_COLUMN": None,
    "BACKFILL_SOURCE_COLUMN_MAP": None,
    "SCB_SOVEREIGN_BANK_ID": None,
    "BACKFILL_SOURCE_PAGE_SIZE": 5000,
    "BACKFILL_SOURCE_TIMEOUT": 30.0,
    "BACKFILL_SOURCE_MAX_RETRIES": 5,
    "BACKFILL_SOURCE_MAX_RETRY_AFTER": 120.0,
    "RETRY_DELAY": 1000,
    "ACCOUNTS_FILE": None,
    "ACCOUNT_MAP_FILE": None,
    "TRANSACTION_TYPE_MAP_FILE": None,
    "LEDGER_ID": "MASTER",
    "BATCH_SIZE": 10_000,
    "CHECKPOINT_INTERVAL": 10,
    "MAX_RETRIES": 3,
    "PARALLEL_WORKERS": 1,
    "SKIP_DUPLICATES": True,
    "VALIDATE_BALANCES": True,
    "FORCE_REDO": False,
    "LOAD_MODE": "auto",
    "MAX_REJECT_RATIO": "1",
    "REJECT_GUARD_MIN_ROWS": 1,
    "REPORTS_DIR": "",
    "STALL_THRESHOLD_SECONDS": 3600,
    "STALL_SENSOR_INTERVAL_SECONDS": 60,
}
# BackfillSettings' fields, each now in one resource (retry_delay_ms in two).
OLD_FIELDS = {
    "source_type",
    "source_file",
    "source_id",
    "accounts_file",
    "account_map_file",
    "transaction_type_map_file",
    "column_map_file",
    "ledger_id",
    "batch_size",
    "checkpoint_interval",
    "max_retries",
    "retry_delay_ms",
    "parallel_workers",
    "skip_duplicates",
    "validate_balances",
    "force_redo",
    "source_timezone",
    "reports_dir",
    "connection",
    "source_table",
    "source_query",
    "source_id_column",
    "source_timestamp_column",
    "source_column_map",
    "scb_sovereign_bank_id",
    "source_page_size",
    "source_timeout_seconds",
    "source_max_retries",
    "source_max_retry_after",
}
SECRET_VARIABLES = ("BACKFILL_SOURCE_URL", "BACKFILL_API_TOKEN")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting variable set (the machine's or another test's)."""
    for variable in [*DEFAULTS, *SECRET_VARIABLES]:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def fields(resource: type[EnvSettings]) -> list[tuple[str, str]]:
    return list(resource.ENV.items())


# -- launchpad overrides ------------------------------------------------------------------------


def posting_job() -> dg.JobDefinition:
    """The code location with a job of the posting stage alone. Its database is one nothing
    listens on: every override here is refused before anything connects."""
    job = dg.define_asset_job("post_only", selection=dg.AssetSelection.keys("posted_batches"))
    nowhere = LedgerDatabase(database_url="postgresql://nobody@127.0.0.1:9/none")
    return build_definitions({"ledger_db": nowhere}, jobs=[job]).resolve_job_def("post_only")


@pytest.mark.parametrize(
    ("resource", "config", "expected"),
    [
        (
            "posting",
            {"batch_size": 0},
            "posting.batch_size: BATCH_SIZE must be from 1 to 1,000,000",
        ),
        (
            "posting",
            {"parallel_workers": 1000},
            "posting.parallel_workers: PARALLEL_WORKERS must be from 1 to 64, got 1,000",
        ),
        (
            "source",
            {"source_timeout_seconds": 0.0},
            "source.source_timeout_seconds: BACKFILL_SOURCE_TIMEOUT must be from 0.001 to 3,600",
        ),
    ],
)
def test_a_launchpad_value_out_of_range_is_refused_naming_the_field(
    clean_env: pytest.MonkeyPatch,
    resource: str,
    config: dict[str, Any],
    expected: str,
) -> None:
    job = posting_job()
    with dg.instance_for_test() as instance:
        run_config = {"resources": {resource: {"config": config}}}
        result = job.execute_in_process(
            run_config=run_config,
            partition_key="2024-01-01",
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        text = "\n".join(
            str(event.event_specific_data) for event in result.all_events if event.is_failure
        )
        started = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert expected in text, text
    assert not started  # refused when the resources are built, before the step


def test_a_source_type_outside_the_four_is_refused_by_the_config_schema(
    clean_env: pytest.MonkeyPatch,
) -> None:
    job = posting_job()
    run_config = {"resources": {"source": {"config": {"source_type": "FTP"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(job, run_config)
    message = str(refused.value)
    assert "source_type" in message and "FTP" in message, message
    # and the same value given in Python, not through Dagster's config
    with pytest.raises(ValueError, match="source_type"):
        SourceSettings(source_type="FTP")  # type: ignore[arg-type]


def test_a_valid_override_is_accepted(clean_env: pytest.MonkeyPatch) -> None:
    job = posting_job()
    run_config = {
        "resources": {
            "posting": {"config": {"batch_size": 5000, "parallel_workers": 64}},
            "source": {"config": {"source_type": "API"}},
        }
    }
    assert (
        dg.validate_run_config(job, run_config)["resources"]["posting"]["config"]["batch_size"]
        == 5000
    )


# -- the environment ----------------------------------------------------------------------------


def test_with_no_variable_set_every_field_is_its_documented_default(
    clean_env: pytest.MonkeyPatch,
) -> None:
    seen: set[str] = set()
    for resource in SETTINGS_RESOURCES:
        from_env = resource.from_env()
        for field, variable in fields(resource):
            seen.add(variable)
            assert getattr(from_env, field) == DEFAULTS[variable], (resource.KEY, field)
            # the launchpad's default is the environment's
            assert resource.model_fields[field].default == DEFAULTS[variable], (resource, field)
    assert seen == set(DEFAULTS)
    assert SourceSettings.from_env().connection is None
    assert PostingSettings.from_env().options() == PostingSettings().options()


def probe_value(resource: type[EnvSettings], field: str, variable: str) -> tuple[str, object]:
    """A valid value other than the default, as the variable's text and as the field's value."""
    default = DEFAULTS[variable]
    annotation = resource.model_fields[field].annotation
    if annotation is bool:
        return ("false", False) if default else ("true", True)
    if annotation in (int, float):
        value = annotation(NUMERIC_LIMITS[variable][1])
        assert value != default
        return str(value), value
    if field == "source_type":
        return "scb", "SCB"  # upper-cased, as before
    if field == "load_mode":
        return "Initial", "initial"  # case-insensitive
    if field == "max_reject_ratio":
        return "0.25", "0.25"  # exact text: a ratio is never a float
    return f"/probe/{variable.lower()}", f"/probe/{variable.lower()}"


def test_every_variable_still_sets_its_field(clean_env: pytest.MonkeyPatch) -> None:
    for resource in SETTINGS_RESOURCES:
        for field, variable in fields(resource):
            text, value = probe_value(resource, field, variable)
            clean_env.setenv(variable, text)
            assert getattr(resource.from_env(), field) == value, (variable, field)
            clean_env.delenv(variable)


def test_the_code_location_has_one_resource_per_concern(clean_env: pytest.MonkeyPatch) -> None:
    resources = build_definitions().resources or {}
    assert set(resources) == set(RESOURCES_FROM_ENV)
    for resource in SETTINGS_RESOURCES:
        assert isinstance(resources[resource.KEY], resource)
    assert "settings" not in resources
    # each option object from its resource, in one place
    assert TransformSettings(ledger_id="L2").rules({"A": "USD"}).default_ledger_id == "L2"
    assert MonitoringSettings(reports_dir="/r").reports_path == Path("/r")


def test_operations_doc_maps_every_old_key_to_its_new_place_and_variable() -> None:
    """docs/operations.md's table: `settings.<field>` → `<key>.<field>`, `VARIABLE`."""
    rows = re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \| (.+?) \|$", OPERATIONS_DOC.read_text(), re.M)
    documented: dict[str, str] = {}  # "<key>.<field>" → its variable(s)
    old_keys: set[str] = set()
    for before, now, variable, _default in rows:
        old = re.fullmatch(r"`settings\.(\w+)`", before)
        new = re.findall(r"`(\w+\.\w+)`", now)
        if not new or not (old or before in ("(read directly)", "(new)")):
            continue
        if old:
            old_keys.add(old.group(1))
        for key in new:
            documented[key] = variable
    assert old_keys == OLD_FIELDS
    by_key = {resource.KEY: resource for resource in SETTINGS_RESOURCES}
    expected = {f"{r.KEY}.{field}" for r in SETTINGS_RESOURCES for field in r.model_fields}
    assert set(documented) == expected
    for key, variable in documented.items():
        resource_key, field = key.split(".")
        if field == "connection":
            continue
        assert variable == f"`{by_key[resource_key].ENV[field]}`", key
