"""Configuration: YAML validated against a JSON schema, then cross-checked, before any job runs.

Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema

from bench.checkpoints.references import BACKEND_MODES, DEFAULT_MODE
from bench.config.all_samplers import expand_all_samplers
from bench.config.cells import (
    DEFAULT_STATE_DTYPE,
    MAX_SHARDS_PER_CELL,
    STATE_DTYPES,
    Cell,
    cells,
    check_coupled_blocks,
    check_sampling_speed,
    check_shard_count,
    config_hash,
    sampling_speed,
    shard_ranges,
    state_dtype_name,
)
from bench.config.nll import (
    PF_ODE,
    check_ode_nll_models,
    check_shared_nll_grids,
    nll_decoder,
    nll_grid_options,
    nll_variances,
    ode_nll_models,
)
from bench.config.precision_recall import PR_METRICS, precision_recall_cells, precision_recall_settings
from bench.config.recon import check_recon, recon_cells
from bench.config.schema import (
    ConfigError,
    config_schema,
    key_of,
    need,
    read_yaml,
    sampler_check,
    sampler_inputs,
    schema_error_message,
)
from bench.config.sources import check_dataset_paths, check_model_source, check_published_reference, checkpoint_registry
from bench.config.tables import (
    METRIC_NAMES,
    ORACLE_METRIC,
    ORACLE_MODEL,
    check_tables,
    profile_reference_split,
    reference_split_cells,
)
from bench.families import check_model, compatible_samplers
from bench.nets.factory import check_network

# The package's public names: the pipeline imports a config's facts from here.
__all__ = [
    "Cell",
    "ConfigError",
    "DEFAULT_STATE_DTYPE",
    "MAX_SHARDS_PER_CELL",
    "METRIC_NAMES",
    "ORACLE_METRIC",
    "ORACLE_MODEL",
    "PF_ODE",
    "PR_METRICS",
    "STATE_DTYPES",
    "cells",
    "check_dataset_paths",
    "checkpoint_registry",
    "config_hash",
    "load_config",
    "nll_decoder",
    "nll_grid_options",
    "nll_variances",
    "ode_nll_models",
    "precision_recall_cells",
    "precision_recall_settings",
    "profile_reference_split",
    "read_yaml",
    "recon_cells",
    "reference_split_cells",
    "sampler_inputs",
    "sampling_speed",
    "shard_ranges",
    "state_dtype_name",
    "validate_config",
]


def validate_config(cfg: Any, *, root: Path = Path("."), check_paths: bool = True) -> dict:
    """Check ``cfg`` against the schema and every cross-reference; return it if valid, with each experiment's
    ``samplers: all`` replaced in place by the samplers it runs (bench.config.all_samplers).

    ``check_paths=False`` skips the check that user data directories exist (a dry run plans without data).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping, got {type(cfg).__name__}")
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), key_of(e.absolute_path)))
    if errors:
        raise ConfigError(schema_error_message(errors[0]))
    expand_all_samplers(cfg)
    check_shard_count(cfg)
    _check_references(cfg)
    check_coupled_blocks(cfg)
    check_sampling_speed(cfg)
    if check_paths:
        check_dataset_paths(cfg, root)
    check_tables(cfg, root)
    return cfg


def _check_model(name: str, model: dict) -> None:
    try:
        check_model(name, model)
        check_network(name, model["network"])
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_references(cfg: dict) -> None:
    from bench.samplers import validation

    for name, ext in cfg["extractors"].items():
        if ext["kind"] == "digits_cnn":
            need(ext["dataset"], cfg["datasets"], f"extractors.{name}.dataset", "dataset")
            continue
        backend = ext.get("backend", "torch-fidelity")
        if ext.get("mode", DEFAULT_MODE[backend]) not in BACKEND_MODES[backend]:
            raise ConfigError(
                f"config key 'extractors.{name}.mode': value {ext['mode']!r} is not allowed with backend "
                f"{backend!r}; allowed: {list(BACKEND_MODES[backend])}"
            )
    registry = checkpoint_registry(cfg)
    for name, model in cfg["models"].items():
        need(model["dataset"], cfg["datasets"], f"models.{name}.dataset", "dataset")
        check_model_source(name, model, registry)
        _check_model(name, model)
    for name, s in cfg["samplers"].items():
        sampler_check(validation.check_entry, name, s)
    for i, exp in enumerate(cfg["experiments"]):
        need(exp["model"], cfg["models"], f"experiments[{i}].model", "model")
        model = cfg["models"][exp["model"]]
        for j, s in enumerate(exp["samplers"]):
            need(s, cfg["samplers"], f"experiments[{i}].samplers[{j}]", "sampler")
            fn = cfg["samplers"][s]["fn"]
            allowed = compatible_samplers(model["family"])
            if fn not in allowed:
                raise ConfigError(
                    f"config key 'experiments[{i}].samplers[{j}]': sampler {s!r} ({fn}) does not apply to "
                    f"model {exp['model']!r} of family {model['family']!r}; that family allows {allowed}"
                )
        # Continuous-time models have no T: K counts their sigma steps or levels.
        T = model["schedule"].get("T")
        for j, K in enumerate(exp["K"]):
            if T is None:
                continue
            if not 1 <= K <= T:
                raise ConfigError(
                    f"config key 'experiments[{i}].K[{j}]': value {K} is not allowed; K must be an "
                    f"integer in [1, T={T}] for model {exp['model']!r}"
                )
            for s in exp["samplers"]:
                sampler_check(validation.check_steps, s, cfg["samplers"][s], T, K, f"experiments[{i}].K[{j}]")
    for name, s in cfg["samplers"].items():
        sampler_check(validation.check_inputs, name, s, sampler_inputs(), has_moments="moments" in cfg)
    check_shared_nll_grids(cfg)
    check_ode_nll_models(cfg)
    check_recon(cfg)
    fd = cfg["metrics"].get("fd_is")
    if fd:
        need(fd["extractor"], cfg["extractors"], "metrics.fd_is.extractor", "extractor")
        if "reference_stats" in fd:
            check_published_reference(fd["reference_stats"], cfg["extractors"][fd["extractor"]])


def load_config(path: Path | str, *, root: Path | None = None, check_paths: bool = True) -> dict:
    """Read and validate a config file (table spec paths are relative to ``root``, default the cwd)."""
    return validate_config(read_yaml(Path(path)), root=root or Path("."), check_paths=check_paths)
