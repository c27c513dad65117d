"""The code location's outward shape, recorded in snapshots/definitions.json (issue 14).

A safety net for moving code around: every asset key with its partitions, group, kinds and deps;
every asset check, job, schedule and sensor; every resource with its config schema; the CLI's
entry points and their commands. A restructuring that keeps all of these leaves the snapshot
unchanged; a deliberate change shows up as a diff of this one file.

The code location is loaded the way `dagster dev -w workspace.yaml` loads it (the module named in
workspace.yaml, its Definitions found by Dagster's own autodiscovery), in a child process with a
fixed environment: the machine's variables never reach it, and it imports the package afresh
(the test process may already hold modules that read other settings when imported). It is loaded
twice, in parallel:

  * with no setting at all: the embedded server, every default (what `make demo` loads);
  * with every secret variable set to a recognisable fake: then the resources refer to
    DATABASE_URL, BACKFILL_SOURCE_URL, ... as EnvVars, recorded by name. The fakes must appear
    nowhere in the snapshot.

Everything but the resources must be the same in both loads. To accept a deliberate change:

    UPDATE_SNAPSHOT=1 .venv/bin/pytest -q ledger_backfill_dagster_tests/test_definitions_snapshot.py

and review and commit the diff of snapshots/definitions.json with the change that caused it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import importlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"
UPDATE_VARIABLE = "UPDATE_SNAPSHOT"
CHILD_MODULE = "ledger_backfill_dagster_tests.test_definitions_snapshot"

# Every variable that may hold a secret (redaction.URL_SETTINGS and the tokens), each set to a
# well-formed fake carrying SECRET_MARK, which must then appear nowhere in the snapshot.
SECRET_MARK = "sn4pshot-s3cret"
FAKE_SECRETS = {
    "DATABASE_URL": f"postgresql://ledger:{SECRET_MARK}-db@db.invalid:5432/ledger",
    "DAGSTER_PG_URL": f"postgresql://dagster:{SECRET_MARK}-pg@pg.invalid:5432/dagster",
    "BACKFILL_SOURCE_URL": f"postgresql://reader:{SECRET_MARK}-src@source.invalid:5432/legacy",
    "BACKFILL_API_TOKEN": f"{SECRET_MARK}-api-token",
    "OUTBOX_RELAY_URL": f"https://relay.invalid/{SECRET_MARK}-outbox",
    "OUTBOX_RELAY_TOKEN": f"{SECRET_MARK}-relay-token",
    "STALL_ALERT_WEBHOOK_URL": f"https://hooks.invalid/{SECRET_MARK}-webhook",
    "ALERT_WEBHOOK_URL": f"https://hooks.invalid/{SECRET_MARK}-alerts",
}
LOADS = {
    "no settings": {},
    "every secret variable set": FAKE_SECRETS,
}
BASE_LOAD = "no settings"

JsonDict = dict[str, Any]


# -- the snapshot, taken inside the child process --------------------------------------------
# Dagster is imported only here (lazily), so the test process itself stays light.


def workspace_location() -> JsonDict:
    """The code location workspace.yaml loads, and pyproject's [tool.dagster] beside it."""
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    return {"workspace.yaml": entry, "pyproject [tool.dagster]": tool}


def load_code_location(module_name: str) -> tuple[Any, Any, str]:
    """(Definitions, RepositoryDefinition, attribute) as Dagster's module loading finds them."""
    from dagster._core.definitions.reconstruct import repository_def_from_target_def
    from dagster._core.workspace.autodiscovery import loadable_targets_from_python_module

    (target,) = loadable_targets_from_python_module(module_name, working_directory=str(REPO))
    repository = repository_def_from_target_def(target.target_definition)
    return target.target_definition, repository, target.attribute


def config_type_text(config_type: Any) -> str:
    """A config type as the launchpad spells it: Int, String | None, [String], Enum(A|B)."""
    from dagster._config import ConfigTypeKind

    kind = config_type.kind
    if kind == ConfigTypeKind.NONEABLE:
        return f"{config_type_text(config_type.inner_type)} | None"
    if kind == ConfigTypeKind.ARRAY:
        return f"[{config_type_text(config_type.inner_type)}]"
    if kind == ConfigTypeKind.ENUM:
        return "Enum(" + "|".join(v.config_value for v in config_type.enum_values) + ")"
    if ConfigTypeKind.has_fields(kind):
        return kind.value.lower()
    return config_type.given_name or config_type.key


def config_fields(config_type: Any) -> JsonDict:
    """Each field: type, required, default (when it has one), and nested fields."""
    from dagster._config import ConfigTypeKind

    fields: JsonDict = {}
    for name, field in (getattr(config_type, "fields", None) or {}).items():
        entry: JsonDict = {
            "type": config_type_text(field.config_type),
            "required": field.is_required,
        }
        if field.default_provided:
            entry["default"] = field.default_value
        inner = field.config_type
        if inner.kind == ConfigTypeKind.NONEABLE:
            inner = inner.inner_type
        if ConfigTypeKind.has_fields(inner.kind):
            entry["fields"] = config_fields(inner)
        fields[name] = entry
    return fields


def config_schema(schema: Any) -> JsonDict | None:
    """An op's config fields (None when it takes no config)."""
    fields = config_fields(schema.as_field().config_type) if schema is not None else {}
    return {"fields": fields} if fields else None


def resource_config(schema: Any) -> JsonDict:
    """A resource's config fields, and the values the code location configured it with, where an
    EnvVar stays {"env": NAME}: Dagster resolves it only inside a run."""
    field = schema.as_field()
    shown: JsonDict = {"fields": config_fields(field.config_type)}
    if field.default_provided:
        shown["configured"] = field.default_value
    return shown


def partitions_text(partitions_def: Any) -> JsonDict | None:
    if partitions_def is None:
        return None
    shown: JsonDict = {"type": type(partitions_def).__name__}
    if hasattr(partitions_def, "fmt"):  # time windows
        end = partitions_def.end
        shown |= {
            "start": partitions_def.start.isoformat(),
            "end": end.isoformat() if end else None,
            "end_offset": partitions_def.end_offset,
            "timezone": partitions_def.timezone,
            "fmt": partitions_def.fmt,
            "cron_schedule": partitions_def.cron_schedule,
        }
    else:
        shown["description"] = str(partitions_def)
    return shown


def retry_text(policy: Any) -> JsonDict | None:
    if policy is None:
        return None
    return {
        "max_retries": policy.max_retries,
        "delay": policy.delay,
        "backoff": policy.backoff.value if policy.backoff else None,
        "jitter": policy.jitter.value if policy.jitter else None,
    }


def optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def sorted_strings(values: Iterable[Any]) -> list[str]:
    return sorted(str(v) for v in values)


def asset_entry(node: Any) -> JsonDict:
    assets_def = node.assets_def
    entry: JsonDict = {
        "group": node.group_name,
        "kinds": sorted(node.kinds),
        "tags": dict(sorted(node.tags.items())),
        "owners": sorted(node.owners),
        "deps": sorted(k.to_user_string() for k in node.parent_keys),
        "partitions": partitions_text(node.partitions_def),
        "execution_type": node.execution_type.value,
        "backfill_policy": optional_text(node.backfill_policy),
        "automation_condition": optional_text(node.automation_condition),
        "code_version": node.code_version,
        "checks": sorted(k.name for k in node.check_keys),
    }
    if assets_def.is_executable:
        op = assets_def.op
        entry |= {
            "op": op.name,
            "pool": op.pool,
            "retry_policy": retry_text(op.retry_policy),
            "op_tags": dict(sorted(op.tags.items())),
            "required_resource_keys": sorted(assets_def.required_resource_keys),
            "config": config_schema(op.config_schema),
        }
    return entry


def assets(repository: Any) -> JsonDict:
    graph = repository.asset_graph
    return {key.to_user_string(): asset_entry(graph.get(key)) for key in graph.get_all_asset_keys()}


def check_name(key: Any) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


def asset_checks(repository: Any) -> JsonDict:
    graph = repository.asset_graph
    checks: JsonDict = {}
    for key in graph.asset_check_keys:
        node = graph.get(key)
        checks[check_name(key)] = {
            "asset": key.asset_key.to_user_string(),
            "name": key.name,
            "blocking": node.blocking,
            "partitions": partitions_text(node.partitions_def),
            "automation_condition": optional_text(node.automation_condition),
            "required_resource_keys": sorted(graph.assets_def_for_key(key).required_resource_keys),
        }
    return checks


def op_entry(op: Any) -> JsonDict:
    return {
        "config": config_schema(op.config_schema),
        "required_resource_keys": sorted(op.required_resource_keys),
        "tags": dict(sorted(op.tags.items())),
        "pool": op.pool,
        "retry_policy": retry_text(op.retry_policy),
    }


def job_entry(job: Any, unresolved: Any) -> JsonDict:
    selected_assets = job.asset_layer.selected_asset_keys
    entry: JsonDict = {
        "selection": optional_text(getattr(unresolved, "selection", None)),
        "assets": sorted(k.to_user_string() for k in selected_assets),
        "checks": sorted(check_name(k) for k in job.asset_layer.asset_graph.asset_check_keys),
        "partitions": partitions_text(job.partitions_def),
        "tags": dict(sorted(job.tags.items())),
        "executor": job.executor_def.name,
        "hooks": sorted(h.name for h in job.hook_defs),
    }
    if not selected_assets:  # an op job: its ops are its whole interface
        entry["ops"] = {node.name: op_entry(node.definition) for node in job.nodes}
    return entry


def jobs(definitions: Any, repository: Any) -> JsonDict:
    unresolved = {job.name: job for job in definitions.jobs or []}
    return {
        job.name: job_entry(job, unresolved.get(job.name))
        for job in repository.get_all_jobs()
        # Dagster's implicit `__ASSET_JOB` repeats the asset graph recorded above.
        if not job.name.startswith("__")
    }


def schedules(repository: Any) -> JsonDict:
    return {
        s.name: {
            "cron_schedule": s.cron_schedule,
            "execution_timezone": s.execution_timezone,
            "job": s.job_name,
            "default_status": s.default_status.value,
            "required_resource_keys": sorted(s.required_resource_keys),
            "tags": dict(sorted(s.tags.items())),
        }
        for s in repository.schedule_defs
    }


def sensors(repository: Any) -> JsonDict:
    return {
        s.name: {
            "sensor_type": s.sensor_type.value,
            "jobs": sorted(t.job_name for t in s.targets),
            "asset_selection": optional_text(s.asset_selection),
            "default_status": s.default_status.value,
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "required_resource_keys": sorted(s.required_resource_keys),
        }
        for s in repository.sensor_defs
    }


def resource_entry(resource_def: Any) -> JsonDict:
    """A resource by class name (not module: modules move), config schema, nested resources."""
    nested = getattr(resource_def, "nested_resources", None) or {}
    entry: JsonDict = {
        "class": getattr(resource_def, "configurable_resource_cls", type(resource_def)).__name__,
        "config": resource_config(resource_def.config_schema),
    }
    if nested:
        entry["nested"] = {
            name: None if value is None else resource_entry(value.get_resource_definition())
            for name, value in nested.items()
        }
    return entry


def resources(repository: Any) -> JsonDict:
    return {
        key: resource_entry(resource_def)
        for key, resource_def in repository.get_top_level_resources().items()
    }


class _ParserCaptured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def argparse_parser(entry_point: Callable[..., Any]) -> argparse.ArgumentParser | None:
    """The parser the entry point builds, caught at its parse_args (nothing runs)."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _ParserCaptured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign,assignment]
    try:
        entry_point([])
    except _ParserCaptured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return None


def parser_form(parser: argparse.ArgumentParser) -> JsonDict:
    """Options and commands, without help texts (argparse's own attributes, the same on every
    supported Python, unlike its --help layout)."""
    form: JsonDict = {"arguments": {}}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            form["command_required"] = action.required
            form["commands"] = {name: parser_form(sub) for name, sub in action.choices.items()}
            continue
        form["arguments"][" ".join(action.option_strings) or action.dest] = {
            "action": type(action).__name__,
            "dest": action.dest,
            "default": action.default,
            "type": getattr(action.type, "__name__", None),
            "nargs": action.nargs,
            "choices": None if action.choices is None else list(action.choices),
            "required": action.required,
        }
    return form


def cli() -> JsonDict:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    forms: JsonDict = {}
    for name, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        parser = argparse_parser(getattr(importlib.import_module(module_name), attribute))
        forms[name] = {"target": target, "form": None if parser is None else parser_form(parser)}
    return forms


def live_snapshot() -> JsonDict:
    location = workspace_location()
    module_name = location["workspace.yaml"]["python_module"]["module_name"]
    definitions, repository, attribute = load_code_location(module_name)
    return {
        "code_location": location | {"attribute": attribute},
        "executor": definitions.executor.name if definitions.executor else None,
        "assets": assets(repository),
        "asset_checks": asset_checks(repository),
        "jobs": jobs(definitions, repository),
        "schedules": schedules(repository),
        "sensors": sensors(repository),
        "resources": resources(repository),
        "cli": cli(),
    }


def stable_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"


# -- the test ---------------------------------------------------------------------------------


def child_environment(home: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """Nothing of the machine's environment: only what Python needs, plus `settings`."""
    return {
        "PATH": os.defpath,
        "HOME": str(home),
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONWARNINGS": "ignore",
        **settings,
    }


def load_in_child(name: str, settings: Mapping[str, str], tmp_path: Path) -> JsonDict:
    home = tmp_path / name.replace(" ", "_")
    home.mkdir()
    out = home / "snapshot.json"
    done = subprocess.run(
        [sys.executable, "-m", CHILD_MODULE, str(out)],
        cwd=REPO,
        env=child_environment(home, settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"loading the code location ({name}) failed:\n{done.stderr[-4000:]}")
    text = out.read_text()
    assert SECRET_MARK not in text, f"a secret's value reached the snapshot ({name})"
    return json.loads(text)


def combined_snapshot(tmp_path: Path) -> JsonDict:
    """Both loads: the base load's sections once, and each load's resources."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(LOADS)) as pool:
        futures = {
            name: pool.submit(load_in_child, name, settings, tmp_path)
            for name, settings in LOADS.items()
        }
        loaded = {name: future.result() for name, future in futures.items()}
    base = loaded[BASE_LOAD]
    for name, other in loaded.items():
        same = {k: v for k, v in other.items() if k != "resources"}
        expected = {k: v for k, v in base.items() if k != "resources"}
        if same != expected:
            pytest.fail(
                f"the code location differs beyond its resources between {BASE_LOAD!r} and "
                f"{name!r}:\n{text_diff(stable_json(expected), stable_json(same))}"
            )
    return base | {"resources": {name: snap["resources"] for name, snap in loaded.items()}}


def leaves(value: object, path: str = "") -> dict[str, object]:
    """{"assets.posted_batches.pool": "ledger_pg", ...}: every value by its path."""
    if isinstance(value, dict) and value:
        found: dict[str, object] = {}
        for key, inner in value.items():
            found |= leaves(inner, f"{path}.{key}" if path else str(key))
        return found
    return {path: value}


def changed_paths(expected: object, actual: object) -> str:
    """The paths that were added, removed or changed, before the line diff: which asset, job or
    resource a diff hunk belongs to is not always in its context lines."""
    old, new = leaves(expected), leaves(actual)
    lines = [f"  removed  {p}" for p in sorted(old.keys() - new.keys())]
    lines += [f"  added    {p}" for p in sorted(new.keys() - old.keys())]
    lines += [f"  changed  {p}" for p in sorted(old.keys() & new.keys()) if old[p] != new[p]]
    return "\n".join(lines)


def text_diff(expected: str, actual: str) -> str:
    lines = difflib.unified_diff(
        expected.splitlines(keepends=True),
        actual.splitlines(keepends=True),
        fromfile="committed snapshot",
        tofile="live code location",
        n=4,
    )
    return "".join(lines)


def test_definitions_match_snapshot(tmp_path: Path) -> None:
    live = stable_json(combined_snapshot(tmp_path))
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(live)
        return
    committed = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    if live != committed:
        paths = changed_paths(json.loads(committed or "{}"), json.loads(live))
        pytest.fail(
            f"The code location no longer matches {SNAPSHOT.relative_to(REPO)}:\n"
            f"{paths}\n\n{text_diff(committed, live)}\n"
            "If the change is deliberate, rewrite the snapshot and commit it with the change:\n"
            f"  {UPDATE_VARIABLE}=1 .venv/bin/pytest -q {Path(__file__).relative_to(REPO)}",
            pytrace=False,
        )


if __name__ == "__main__":  # the child process: python -m ... <output file>
    Path(sys.argv[1]).write_text(stable_json(live_snapshot()))
