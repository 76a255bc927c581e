"""The config's JSON schema and YAML reading: every error names the key, the bad value and what is allowed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bench.runtime.strict_yaml import load_yaml


class ConfigError(ValueError):
    """A configuration that cannot run: the message names the key, the value and what is allowed."""


def config_schema() -> dict:
    return load_yaml(resources.files("bench.schema").joinpath("config.schema.yaml").read_text())


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as err:
        bad = err.object[err.start]
        raise ConfigError(f"config file {path} is not UTF-8 text: byte {err.start} is {bad:#04x}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        return load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"malformed YAML in {path} at {where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {path}: {err}") from None


def key_of(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def schema_error_message(err: jsonschema.ValidationError) -> str:
    key = key_of(err.absolute_path)
    v = err.validator
    if v == "enum":
        return f"config key '{key}': value {err.instance!r} is not allowed; allowed: {err.validator_value}"
    if v == "required":
        return f"config key '{key}': {err.message}"
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"config key '{key}': {err.message}; allowed keys: {allowed}"
    if v in _BOUNDS:
        return f"config key '{key}': value {err.instance!r} must be {_BOUNDS[v]} {err.validator_value}"
    if v == "type":
        return f"config key '{key}': value {err.instance!r} is not of type {err.validator_value}"
    return f"config key '{key}': value {err.instance!r}: {err.message}"


def need(name: str, table: dict, key: str, what: str) -> None:
    if name not in table:
        raise ConfigError(f"config key '{key}': unknown {what} {name!r}; defined: {sorted(table)}")



def sampler_inputs() -> dict[str, dict]:
    """Keyword -> schema of each artifact the DAG passes to a sampler function (the schema's samplers.*.inputs)."""
    return config_schema()["properties"]["samplers"]["additionalProperties"]["properties"]["inputs"]["properties"]


def sampler_check(check, *args, **kwargs) -> None:
    """One of bench.samplers.validation's checks, its error raised as the config's."""
    from bench.samplers.validation import SamplerConfigError

    try:
        check(*args, **kwargs)
    except SamplerConfigError as err:
        raise ConfigError(str(err)) from None
