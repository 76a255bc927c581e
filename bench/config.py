"""Configuration: YAML validated against a JSON schema, then cross-checked, before any job runs.

Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bench.grids import GRIDS, MOMENT_GRIDS, check_time_grid

METRIC_NAMES = ("fd_digits", "is_digits", "nll_bpd")


class ConfigError(ValueError):
    """A configuration that cannot run: the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Cell:
    """One experiment: a model sampled by one sampler with K steps."""

    model: str
    sampler: str
    K: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.sampler}/K{self.K}"


def _schema() -> dict:
    return yaml.safe_load(resources.files("bench.schema").joinpath("config.schema.yaml").read_text())


def compatibility() -> dict[str, list[str]]:
    """Family -> sampler functions that apply to it."""
    return yaml.safe_load(resources.files("bench.schema").joinpath("compatibility.yaml").read_text())


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"malformed YAML in {path} at {where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {path}: {err}") from None


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _schema_error_message(err: jsonschema.ValidationError) -> str:
    key = _key(err.absolute_path)
    v = err.validator
    if v == "enum":
        return f"config key '{key}': value {err.instance!r} is not allowed; allowed: {err.validator_value}"
    if v == "required":
        return f"config key '{key}': {err.message}"
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return f"config key '{key}': {err.message}; allowed keys: {allowed}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"config key '{key}': value {err.instance!r} must be {v} {err.validator_value}"
    if v == "type":
        return f"config key '{key}': value {err.instance!r} is not of type {err.validator_value}"
    return f"config key '{key}': value {err.instance!r}: {err.message}"


def validate_config(cfg: Any, *, root: Path = Path(".")) -> dict:
    """Check ``cfg`` against the schema and every cross-reference; return it unchanged if valid."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping, got {type(cfg).__name__}")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise ConfigError(_schema_error_message(errors[0]))
    _check_references(cfg)
    _check_tables(cfg, root)
    return cfg


def _need(name: str, table: dict, key: str, what: str) -> None:
    if name not in table:
        raise ConfigError(f"config key '{key}': unknown {what} {name!r}; defined: {sorted(table)}")


def _check_references(cfg: dict) -> None:
    from bench.samplers import SAMPLERS

    compat = compatibility()
    for name, ext in cfg["extractors"].items():
        _need(ext["dataset"], cfg["datasets"], f"extractors.{name}.dataset", "dataset")
    for name, model in cfg["models"].items():
        _need(model["dataset"], cfg["datasets"], f"models.{name}.dataset", "dataset")
        if model["family"] not in compat:
            raise ConfigError(
                f"config key 'models.{name}.family': value {model['family']!r} is not allowed; "
                f"allowed: {sorted(compat)}"
            )
    for name, s in cfg["samplers"].items():
        if s["fn"] not in SAMPLERS:
            raise ConfigError(
                f"config key 'samplers.{name}.fn': value {s['fn']!r} is not allowed; allowed: {sorted(SAMPLERS)}"
            )
    for i, exp in enumerate(cfg["experiments"]):
        _need(exp["model"], cfg["models"], f"experiments[{i}].model", "model")
        model = cfg["models"][exp["model"]]
        for j, s in enumerate(exp["samplers"]):
            _need(s, cfg["samplers"], f"experiments[{i}].samplers[{j}]", "sampler")
            fn = cfg["samplers"][s]["fn"]
            if fn not in compat[model["family"]]:
                raise ConfigError(
                    f"config key 'experiments[{i}].samplers[{j}]': sampler {s!r} ({fn}) does not apply to "
                    f"model {exp['model']!r} of family {model['family']!r}; that family allows "
                    f"{compat[model['family']]}"
                )
        T = model["schedule"]["T"]
        for j, K in enumerate(exp["K"]):
            if not 1 <= K <= T:
                raise ConfigError(
                    f"config key 'experiments[{i}].K[{j}]': value {K} is not allowed; K must be an "
                    f"integer in [1, T={T}] for model {exp['model']!r}"
                )
            for s in exp["samplers"]:
                sampler = cfg["samplers"][s]
                if sampler["grid"] not in GRIDS:
                    continue
                try:
                    check_time_grid(sampler["grid"], T, K, **sampler.get("grid_options", {}))
                except ValueError as err:
                    raise ConfigError(f"config key 'experiments[{i}].K[{j}]' with sampler {s!r}: {err}") from None
    for name, s in cfg["samplers"].items():
        uses_moments = s.get("inputs", {}).get("gamma") == "moments" or s.get("nll") == "analytic"
        if (uses_moments or s["grid"] in MOMENT_GRIDS) and "moments" not in cfg:
            raise ConfigError(
                f"config key 'samplers.{name}': needs the Analytic-DPM moments, but the config has no 'moments' key"
            )
    _check_shared_nll_grids(cfg)
    fd = cfg["metrics"].get("fd_is")
    if fd:
        _need(fd["extractor"], cfg["extractors"], "metrics.fd_is.extractor", "extractor")


def _check_shared_nll_grids(cfg: dict) -> None:
    """The samplers of a model that share one NLL job (same grid name) must realise the same grid."""
    seen: dict[tuple[str, str], tuple[str, dict]] = {}
    for exp in cfg["experiments"]:
        for name in exp["samplers"]:
            s = cfg["samplers"][name]
            if "nll" not in s:
                continue
            options = s.get("grid_options", {})
            first = seen.setdefault((exp["model"], s["grid"]), (name, options))
            if first[1] != options:
                raise ConfigError(
                    f"config key 'samplers.{name}.grid_options': {options} differ from {first[1]} of sampler "
                    f"{first[0]!r}, which shares the NLL job of model {exp['model']!r} on grid {s['grid']!r}"
                )


def nll_grid_options(cfg: dict, model: str, grid: str) -> dict:
    """The grid options of the NLL job of (model, grid), common to its samplers (see _check_shared_nll_grids)."""
    for exp in cfg["experiments"]:
        if exp["model"] == model:
            for name in exp["samplers"]:
                s = cfg["samplers"][name]
                if "nll" in s and s["grid"] == grid:
                    return s.get("grid_options", {})
    return {}


def _check_tables(cfg: dict, root: Path) -> None:
    defined = {(c.model, c.sampler, c.K) for c in cells(cfg)}
    for i, rel in enumerate(cfg["tables"]):
        path = root / rel
        if not path.exists():
            raise ConfigError(f"config key 'tables[{i}]': table spec {rel!r} does not exist under {root}")
        spec = read_yaml(path)
        metric = spec.get("metric") if isinstance(spec, dict) else None
        if metric not in METRIC_NAMES:
            raise ConfigError(f"table spec {rel}: metric {metric!r} is not allowed; allowed: {list(METRIC_NAMES)}")
        for r, row in enumerate(spec.get("rows", [])):
            for value in spec["columns"]["values"]:
                cell = (row.get("model"), row.get("sampler"), value)
                if cell not in defined:
                    raise ConfigError(
                        f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at "
                        f"{spec['columns']['field']}={value} refers to cell model={cell[0]!r}, "
                        f"sampler={cell[1]!r}, K={value!r}, which no experiment defines"
                    )


def load_config(path: Path | str, *, root: Path | None = None) -> dict:
    """Read and validate a config file (table spec paths are relative to ``root``, default the cwd)."""
    return validate_config(read_yaml(Path(path)), root=root or Path("."))


def cells(cfg: dict) -> list[Cell]:
    """Every (model, sampler, K) the experiments ask for, in a stable order, without duplicates."""
    seen: dict[Cell, None] = {}
    for exp in cfg["experiments"]:
        for s in exp["samplers"]:
            for K in exp["K"]:
                seen[Cell(exp["model"], s, K)] = None
    return list(seen)


def shard_ranges(cfg: dict) -> list[tuple[int, int]]:
    """[start, stop) sample indices of each shard; sample i always gets seed ``sampling.seed + i``."""
    n, size = cfg["sampling"]["n_samples"], cfg["sampling"]["shard_size"]
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the config (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
