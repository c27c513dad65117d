"""Clear errors instead of unclear ones or green runs (issue #13, class 10).

- Every numeric setting has a range; a value outside it (or not a number, NaN, infinity) fails
  naming the variable and the range, from the environment or from the launchpad's run config.
- Every user-supplied file (ACCOUNTS_FILE, ACCOUNT_MAP_FILE, TRANSACTION_TYPE_MAP_FILE,
  COLUMN_MAP_FILE) with a bad byte or a bad line fails naming the variable, the file and the line.
- A reversed partition range fails saying so, instead of reconciling zero rows.
Through the real commands (`dagster asset materialize`, `dagster job execute`, `ledger-backfill`)
against real PostgreSQL, and through the loaders for every variant.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import pytest

from ledger_backfill_dagster.defs.backfill.common import no_partitions
from ledger_backfill_dagster.entries.transform import load_mapping
from ledger_backfill_dagster.ledger.accounts import AccountsFileError, read_accounts_file
from ledger_backfill_dagster.lib.env import NUMERIC_LIMITS
from ledger_backfill_dagster.lib.errors import SettingsError
from ledger_backfill_dagster.lib.user_files import UserFileError
from ledger_backfill_dagster.resources.settings import (
    SETTINGS_RESOURCES,
    PostingSettings,
    numeric_setting,
)
from ledger_backfill_dagster.sources.generate import generate
from ledger_backfill_dagster.sources.layout import LayoutError, load_column_map
from ledger_backfill_dagster_tests.support.cli import (
    LEDGER_BACKFILL,
    dagster_home,
    job_command,
    materialize_command,
    partition_range,
    run,
)
from ledger_backfill_dagster_tests.support.helpers import range_tags

FLOAT_SETTINGS = {"BACKFILL_SOURCE_TIMEOUT", "BACKFILL_SOURCE_MAX_RETRY_AFTER"}


# -- numeric settings -------------------------------------------------------------------------


def read_setting(name: str) -> object:
    """Read `name` the way the code does: through the settings resource that holds it."""
    resource, field = numeric_setting(name)
    return getattr(resource.from_env(), field)


def shown(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def test_every_numeric_setting_is_listed_with_its_range() -> None:
    numeric = {
        variable
        for resource in SETTINGS_RESOURCES
        for field, variable in resource.ENV.items()
        if resource.model_fields[field].annotation in (int, float)
    }
    assert numeric == set(NUMERIC_LIMITS)
    for low, high in NUMERIC_LIMITS.values():
        assert 0 <= low < high < 2**31


@pytest.mark.parametrize("name", sorted(NUMERIC_LIMITS))
def test_a_numeric_setting_outside_its_range_fails_naming_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    low, high = NUMERIC_LIMITS[name]
    monkeypatch.setenv(name, str(low))
    assert read_setting(name) == low
    monkeypatch.setenv(name, str(high))
    assert read_setting(name) == high
    wrong = ["99999999999999999999", str(high + 1), "-1", "12abc", "1e400"]
    if name in FLOAT_SETTINGS:
        wrong += ["nan", "inf", "-inf"]
    else:
        wrong += ["2.5"]
    if low > 0:
        wrong.append("0")
    for value in wrong:
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError) as failure:
            read_setting(name)
        message = str(failure.value)
        assert message.startswith(f"{name} must be ")
        assert f"from {shown(low)} to {shown(high)}" in message, message


def test_a_launchpad_value_outside_its_range_fails_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"batch_size: BATCH_SIZE must be from 1 to 1,000,000"):
        PostingSettings(batch_size=10**20)
    with pytest.raises(
        ValueError, match=r"parallel_workers: PARALLEL_WORKERS must be from 1 to 64"
    ):
        PostingSettings(parallel_workers=0)


# -- user-supplied files ----------------------------------------------------------------------

BAD_BYTE_LINE = 3
ACCOUNTS = b"accountId,currencyCode\nA-1,USD\nA-\xff2,EUR\nA-3,GBP\n"
MAP = b"sourceId,ledgerId\nOLD-1,NEW-1\nOLD-\xe92,NEW-2\n"
COLUMN_MAP = b'{\n  "From": "debitAccountId",\n  "To\xc3(": "creditAccountId"\n}\n'


def loader(setting: str, path: str) -> object:
    if setting == "ACCOUNTS_FILE":
        return read_accounts_file(path)
    if setting == "COLUMN_MAP_FILE":
        return load_column_map(path)
    return load_mapping(path, setting)


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        ("ACCOUNTS_FILE", ACCOUNTS),
        ("ACCOUNT_MAP_FILE", MAP),
        ("TRANSACTION_TYPE_MAP_FILE", MAP),
        ("COLUMN_MAP_FILE", COLUMN_MAP),
    ],
)
def test_a_bad_byte_names_the_variable_the_file_and_the_line(
    setting: str, content: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(UserFileError) as failure:
        loader(setting, str(path))
    assert str(failure.value).startswith(f"{setting} {path}: line {BAD_BYTE_LINE}, byte ")
    assert "not UTF-8" in str(failure.value)


@pytest.mark.parametrize(
    ("setting", "content", "line", "problem"),
    [
        ("ACCOUNTS_FILE", b"accountId,currencyCode\nA-1,USD\nA-2,XYZ\n", 3, "not ISO 4217"),
        ("ACCOUNTS_FILE", b"\n\naccountId,currencyCode\n\nA-1,USD\n,EUR\n", 6, "empty accountId"),
        ("ACCOUNTS_FILE", b'accountId,currencyCode\nA-1,USD\n"A-2,EUR\n', 3, "unexpected end"),
        ("ACCOUNTS_FILE", b"accountId,currency\nA-1,USD\n", 1, "header lacks"),
        ("ACCOUNTS_FILE", b"accountId,currencyCode\nA-1,U\x00SD\n", 2, "NUL byte"),
        ("ACCOUNT_MAP_FILE", b"sourceId,ledgerId\r\nOLD-1,NEW-1\r\n\r\nOLD-2\r\n", 4, "expected"),
        ("TRANSACTION_TYPE_MAP_FILE", b'sourceType,ledgerType\n"A\nB",C\nD\n', 4, "expected"),
        ("COLUMN_MAP_FILE", b'{\n  "From": "debitAccountId",\n  "To" "x"\n}', 3, "not JSON"),
    ],
)
def test_a_bad_line_names_the_variable_the_file_and_the_line(
    setting: str, content: bytes, line: int, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(UserFileError) as failure:
        loader(setting, str(path))
    message = str(failure.value)
    assert message.startswith(f"{setting} {path}: line {line}"), message
    assert problem in message


@pytest.mark.parametrize(
    "setting", ["ACCOUNTS_FILE", "ACCOUNT_MAP_FILE", "TRANSACTION_TYPE_MAP_FILE", "COLUMN_MAP_FILE"]
)
def test_a_missing_file_names_the_variable(setting: str, tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(UserFileError, match=f"^{setting} {path}: cannot be read: No such file"):
        loader(setting, str(path))


def test_the_file_errors_keep_their_old_types(tmp_path: Path) -> None:
    """Callers that catch AccountsFileError, LayoutError or ValueError still do."""
    path = tmp_path / "file"
    path.write_bytes(ACCOUNTS)
    with pytest.raises(AccountsFileError):
        read_accounts_file(str(path))
    path.write_bytes(COLUMN_MAP)
    with pytest.raises(LayoutError):
        load_column_map(str(path))
    path.write_bytes(MAP)
    with pytest.raises(ValueError):
        load_mapping(str(path))


# -- partition ranges -------------------------------------------------------------------------


def test_an_empty_range_says_why() -> None:
    reversed_range = no_partitions(
        {
            "dagster/asset_partition_range_start": "2024-01-05",
            "dagster/asset_partition_range_end": "2024-01-01",
        }
    )
    assert "2024-01-05...2024-01-01 is reversed" in reversed_range
    assert "2024-01-01...2024-01-05" in reversed_range
    assert "covers no partition" in no_partitions({})


# -- through the real commands ----------------------------------------------------------------


@pytest.fixture
def command_env(tmp_path: Path, backfill_env: dict[str, str]) -> dict[str, str]:
    data = generate(tmp_path / "data", entries=300, days=2, accounts=10, start=date(2024, 1, 1))
    return {
        **os.environ,
        **backfill_env,
        "DAGSTER_HOME": str(dagster_home(tmp_path)),
        "BACKFILL_SOURCE_FILE": str(data.entries_file),
        "ACCOUNTS_FILE": str(data.accounts_file),
    }


def materialize(env: dict[str, str], *partition: str, select: str = "*") -> str:
    """`dagster asset materialize`, which must fail; returns its output."""
    done = run(materialize_command(*partition, select=select), env)
    assert done.returncode != 0, done.stdout[-2000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_reversed_range_fails_instead_of_reconciling_nothing(
    command_env: dict[str, str],
) -> None:
    expected = "the partition range 2024-01-02...2024-01-01 is reversed"
    text = materialize(command_env, *partition_range("2024-01-02", "2024-01-01"))
    assert expected in text
    assert "RECONCILES" not in text
    done = run(
        job_command(
            "ledger_backfill_job",
            tags=range_tags("2024-01-02", "2024-01-01"),
        ),
        command_env,
    )
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr
    assert "RECONCILES" not in done.stdout + done.stderr


@pytest.mark.slow
def test_out_of_range_numbers_fail_before_any_run(command_env: dict[str, str], tmp_path) -> None:
    text = materialize(
        {**command_env, "BATCH_SIZE": "99999999999999999999"}, "--partition", "2024-01-01"
    )
    assert "BATCH_SIZE must be from 1 to 1,000,000, got 99,999,999,999,999,999,999" in text
    assert "pyarrow" not in text and "STEP_START" not in text

    config = tmp_path / "run_config.json"
    config.write_text(json.dumps({"resources": {"posting": {"config": {"batch_size": 10**20}}}}))
    done = run(
        job_command(
            "ledger_backfill_job", "-c", str(config), tags={"dagster/partition": "2024-01-01"}
        ),
        command_env,
    )
    assert done.returncode != 0
    assert "BATCH_SIZE must be from 1 to 1,000,000" in done.stderr

    for env, args in (
        ({**command_env, "STALL_THRESHOLD_SECONDS": "0"}, []),
        (command_env, ["--stall-seconds", "99999999999"]),
    ):
        done = run([str(LEDGER_BACKFILL), "status", *args], env)
        assert done.returncode == 2
        assert done.stderr.startswith("configuration error: STALL_THRESHOLD_SECONDS must be")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "content", "name"),
    [
        ("ACCOUNTS_FILE", ACCOUNTS, "accounts.csv"),
        ("ACCOUNT_MAP_FILE", MAP, "account_map.csv"),
        ("TRANSACTION_TYPE_MAP_FILE", MAP, "type_map.csv"),
        ("COLUMN_MAP_FILE", COLUMN_MAP, "columns.json"),
    ],
)
def test_a_bad_byte_in_a_user_file_names_it_in_the_run(
    command_env: dict[str, str], tmp_path: Path, setting: str, content: bytes, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    text = materialize(
        {**command_env, setting: str(path)},
        "--partition",
        "2024-01-01",
        select="extracted_source,transformed_entries",
    )
    assert f"{setting} {path}: line {BAD_BYTE_LINE}, byte " in text
    assert "not UTF-8" in text
    assert "the source cannot be read" not in text
