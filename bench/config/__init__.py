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

from bench.checkpoints.references import BACKEND_MODES, DEFAULT_MODE, load_references
from bench.core.options import OptionError, check_options, option_parameters, required_options
from bench.families import check_model, compatible_samplers, continuous_families
from bench.runtime.speed import SpeedOptions
from bench.runtime.strict_yaml import load_yaml
from bench.steps.paths import cell_key

# Digits metrics (embedded default), PF-ODE likelihoods and the papers' Inception FID / IS (paper profile).
METRIC_NAMES = ("fd_digits", "is_digits", "nll_bpd", "ode_nll_bpd", "fid", "is")
# The oracle table's metric and model name in metrics.csv (bench.steps.oracle; config key 'oracle').
ORACLE_METRIC, ORACLE_MODEL = "oracle_energy", "oracle"
# The `sampler` of an ode_nll_bpd row in metrics.csv and in table specs: the PF-ODE solve itself.
PF_ODE = "pf_ode"
# The sampler state's dtypes (the schema's sampling.state_dtype) and the one a config without it gets.
STATE_DTYPES = ("float32", "float64")
DEFAULT_STATE_DTYPE = "float32"


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
        return cell_key(self.model, self.sampler, self.K)


def _schema() -> dict:
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


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


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
    if v in _BOUNDS:
        return f"config key '{key}': value {err.instance!r} must be {_BOUNDS[v]} {err.validator_value}"
    if v == "type":
        return f"config key '{key}': value {err.instance!r} is not of type {err.validator_value}"
    return f"config key '{key}': value {err.instance!r}: {err.message}"


def validate_config(cfg: Any, *, root: Path = Path("."), check_paths: bool = True) -> dict:
    """Check ``cfg`` against the schema and every cross-reference; return it unchanged if valid.

    ``check_paths=False`` skips the check that user data directories exist (a dry run plans without data).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"config must be a mapping, got {type(cfg).__name__}")
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise ConfigError(_schema_error_message(errors[0]))
    _check_shard_count(cfg)
    _check_references(cfg)
    _check_coupled_blocks(cfg)
    _check_sampling_speed(cfg)
    if check_paths:
        check_dataset_paths(cfg, root)
    _check_tables(cfg, root)
    return cfg


def _need(name: str, table: dict, key: str, what: str) -> None:
    if name not in table:
        raise ConfigError(f"config key '{key}': unknown {what} {name!r}; defined: {sorted(table)}")


def ode_nll_models(cfg: dict) -> list[str]:
    """The models that get a PF-ODE likelihood, when metrics.ode_nll is set: those of its ``models``
    list, else every continuous-time model."""
    if "ode_nll" not in cfg["metrics"]:
        return []
    chosen = cfg["metrics"]["ode_nll"].get("models")
    return [
        name for name, m in cfg["models"].items()
        if m["family"] in continuous_families() and (chosen is None or name in chosen)
    ]


def _check_ode_nll_models(cfg: dict) -> None:
    chosen = cfg["metrics"].get("ode_nll", {}).get("models", [])
    for i, name in enumerate(chosen):
        _need(name, cfg["models"], f"metrics.ode_nll.models[{i}]", "model")
        family = cfg["models"][name]["family"]
        if family not in continuous_families():
            raise ConfigError(
                f"config key 'metrics.ode_nll.models[{i}]': model {name!r} of family {family!r} has no "
                f"PF-ODE likelihood; allowed: models of the families {continuous_families()}"
            )


def _check_network(name: str, network: dict) -> None:
    """``network`` options against the constructor of its type, past what build_network fills from the data shape."""
    from bench.nets.factory import NETWORK_TYPES, network_constructor, shape_keywords

    kind = network["type"]
    key = f"models.{name}.network"
    if kind not in NETWORK_TYPES:
        raise ConfigError(f"config key '{key}.type': value {kind!r} is not allowed; allowed: {list(NETWORK_TYPES)}")
    options = {k: v for k, v in network.items() if k != "type"}
    if kind == "edm_precond":
        # Its constructor comes from the official pickle (bench.checkpoints.convert), which replaces this entry.
        if options:
            raise ConfigError(
                f"config key '{key}.{next(iter(options))}': network type 'edm_precond' takes its constructor "
                f"from the checkpoint's pickle; allowed: []"
            )
        return
    build = network_constructor(kind)
    exclude = shape_keywords(kind, channels=0, image_size=0)
    try:
        check_options(build, options, owner=f"network type {kind!r}", exclude=exclude)
    except OptionError as err:
        raise _options_error(key, err) from None
    missing = [n for n in required_options(build, option_parameters(build, exclude=exclude)) if n not in options]
    if missing:
        raise ConfigError(f"config key '{key}': network type {kind!r} needs option {missing[0]!r}")


def _check_model(name: str, model: dict) -> None:
    try:
        check_model(name, model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check_network(name, model["network"])


def _options_error(key: str, err: OptionError) -> ConfigError:
    return ConfigError(f"config key '{key}.{err.option}': {err}")


def sampler_inputs() -> dict[str, dict]:
    """Keyword -> schema of each artifact the DAG passes to a sampler function (the schema's samplers.*.inputs)."""
    return _schema()["properties"]["samplers"]["additionalProperties"]["properties"]["inputs"]["properties"]


def _sampler_check(check, *args, **kwargs) -> None:
    """One of bench.samplers.validation's checks, its error raised as the config's."""
    from bench.samplers.validation import SamplerConfigError

    try:
        check(*args, **kwargs)
    except SamplerConfigError as err:
        raise ConfigError(str(err)) from None


def _check_references(cfg: dict) -> None:
    from bench.samplers import validation

    for name, ext in cfg["extractors"].items():
        if ext["kind"] == "digits_cnn":
            _need(ext["dataset"], cfg["datasets"], f"extractors.{name}.dataset", "dataset")
            continue
        backend = ext.get("backend", "torch-fidelity")
        if ext.get("mode", DEFAULT_MODE[backend]) not in BACKEND_MODES[backend]:
            raise ConfigError(
                f"config key 'extractors.{name}.mode': value {ext['mode']!r} is not allowed with backend "
                f"{backend!r}; allowed: {list(BACKEND_MODES[backend])}"
            )
    registry = checkpoint_registry(cfg)
    for name, model in cfg["models"].items():
        _need(model["dataset"], cfg["datasets"], f"models.{name}.dataset", "dataset")
        _check_model_source(name, model, registry)
        _check_model(name, model)
    for name, s in cfg["samplers"].items():
        _sampler_check(validation.check_entry, name, s)
    for i, exp in enumerate(cfg["experiments"]):
        _need(exp["model"], cfg["models"], f"experiments[{i}].model", "model")
        model = cfg["models"][exp["model"]]
        for j, s in enumerate(exp["samplers"]):
            _need(s, cfg["samplers"], f"experiments[{i}].samplers[{j}]", "sampler")
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
                _sampler_check(validation.check_steps, s, cfg["samplers"][s], T, K, f"experiments[{i}].K[{j}]")
    for name, s in cfg["samplers"].items():
        _sampler_check(validation.check_inputs, name, s, sampler_inputs(), has_moments="moments" in cfg)
    _check_shared_nll_grids(cfg)
    _check_ode_nll_models(cfg)
    fd = cfg["metrics"].get("fd_is")
    if fd:
        _need(fd["extractor"], cfg["extractors"], "metrics.fd_is.extractor", "extractor")
        if "reference_stats" in fd:
            _check_published_reference(fd["reference_stats"], cfg["extractors"][fd["extractor"]])


def _check_published_reference(name: str, extractor: dict) -> None:
    """Published statistics exist in the registry and come from the extractor's Inception mode."""
    stats = load_references().statistics
    _need(name, stats, "metrics.fd_is.reference_stats", "reference statistics")
    if extractor["kind"] != "inception_v3":
        raise ConfigError(
            f"config key 'metrics.fd_is.reference_stats': published statistics {name!r} are Inception statistics; "
            f"the extractor is {extractor['kind']!r}"
        )
    backend = extractor.get("backend", "torch-fidelity")
    mode = extractor.get("mode", DEFAULT_MODE[backend])
    if stats[name].mode != mode:
        raise ConfigError(
            f"config key 'metrics.fd_is.reference_stats': {name!r} was made in mode {stats[name].mode!r}, "
            f"but the extractor runs {backend} in mode {mode!r}"
        )


def checkpoint_registry(cfg: dict) -> dict:
    """bench/checkpoints/registry.yaml with the config's ``checkpoints:`` entries applied (mirrors, own files)."""
    from bench.checkpoints.registry import RegistryError, with_overrides

    try:
        return with_overrides(cfg.get("checkpoints", {}))
    except RegistryError as err:
        raise ConfigError(str(err)) from None


def _check_model_source(name: str, model: dict, registry: dict) -> None:
    """A model is trained here (``train``) or converted from an official checkpoint (``checkpoint``)."""
    from bench.checkpoints.convert import LOADABLE_LAYOUTS
    from bench.checkpoints.registry import UnknownCheckpoint, get_checkpoint

    if ("train" in model) == ("checkpoint" in model):
        raise ConfigError(
            f"config key 'models.{name}': give exactly one of 'train' (train it here) and 'checkpoint' "
            "(an official checkpoint named in bench/checkpoints/registry.yaml)"
        )
    if "checkpoint" not in model:
        return
    try:
        entry = get_checkpoint(model["checkpoint"], registry)
    except UnknownCheckpoint as err:
        raise ConfigError(f"config key 'models.{name}.checkpoint': {err}") from None
    if entry.layout not in LOADABLE_LAYOUTS:
        raise ConfigError(
            f"config key 'models.{name}.checkpoint': {entry.name!r} has layout {entry.layout!r}, from which no "
            f"model converts yet; convertible layouts: {sorted(LOADABLE_LAYOUTS)}"
        )
def check_dataset_paths(cfg: dict, root: Path) -> None:
    """A dataset read from user files (``root:``) must point at an existing directory before any job starts."""
    for name, ds in cfg["datasets"].items():
        if "root" not in ds or ds.get("download"):
            continue
        where = Path(root) / Path(ds["root"]).expanduser()
        if not where.is_dir():
            raise ConfigError(
                f"config key 'datasets.{name}.root': path {ds['root']!r} ({where}) is not an existing directory; "
                f"allowed: the directory that holds the {ds['kind']!r} files"
            )


# The bounds whose decoder variance a sampler's nll_decoder chooses; the analytic bound always takes
# Analytic-DPM's and the learned one iDDPM's.
FIXED_VARIANCE_BOUNDS = ("beta", "beta_tilde")


def _check_shared_nll_grids(cfg: dict) -> None:
    """The samplers of a model that share one NLL job (same grid name) must realise the same grid and,
    for the fixed-variance bounds, name the same decoder variance."""
    for name, s in cfg["samplers"].items():
        if "nll_decoder" in s and s.get("nll") not in FIXED_VARIANCE_BOUNDS:
            raise ConfigError(
                f"config key 'samplers.{name}.nll_decoder': only a sampler with nll one of "
                f"{list(FIXED_VARIANCE_BOUNDS)} chooses the decoder variance, not nll {s.get('nll')!r}"
            )
    seen: dict[tuple[str, str], tuple[str, dict]] = {}
    decoders: dict[tuple[str, str], tuple[str, str]] = {}
    for exp in cfg["experiments"]:
        for name in exp["samplers"]:
            s = cfg["samplers"][name]
            if "nll" not in s:
                continue
            if s["nll"] in FIXED_VARIANCE_BOUNDS:
                decoder = s.get("nll_decoder", "trajectory")
                first_decoder = decoders.setdefault((exp["model"], s["grid"]), (name, decoder))
                if first_decoder[1] != decoder:
                    raise ConfigError(
                        f"config key 'samplers.{name}.nll_decoder': {decoder!r} differs from {first_decoder[1]!r} "
                        f"of sampler {first_decoder[0]!r}, which shares the NLL job of model {exp['model']!r} "
                        f"on grid {s['grid']!r}"
                    )
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


def nll_decoder(cfg: dict, model: str, grid: str) -> str:
    """The decoder variance of the fixed-variance bounds of the NLL job of (model, grid) (_check_shared_nll_grids)."""
    for exp in cfg["experiments"]:
        if exp["model"] == model:
            for name in exp["samplers"]:
                s = cfg["samplers"][name]
                if s.get("nll") in FIXED_VARIANCE_BOUNDS and s["grid"] == grid:
                    return s.get("nll_decoder", "trajectory")
    return "trajectory"


def _check_tables(cfg: dict, root: Path) -> None:
    defined = {(c.model, c.sampler, c.K) for c in cells(cfg)}
    for i, rel in enumerate(cfg["tables"]):
        path = root / rel
        if not path.exists():
            raise ConfigError(f"config key 'tables[{i}]': table spec {rel!r} does not exist under {root}")
        spec = read_yaml(path)
        metric = spec.get("metric") if isinstance(spec, dict) else None
        planned_only = isinstance(spec, dict) and all("unavailable" in row for row in spec.get("rows", []))
        # A spec whose every row is unavailable records a paper table this benchmark cannot measure.
        oracle = metric == ORACLE_METRIC and not planned_only
        if oracle and "oracle" not in cfg:
            raise ConfigError(f"table spec {rel}: metric {ORACLE_METRIC!r} needs the config key 'oracle'")
        if metric not in METRIC_NAMES and not planned_only and not oracle:
            raise ConfigError(
                f"table spec {rel}: metric {metric!r} is not allowed; allowed: {[*METRIC_NAMES, ORACLE_METRIC]}"
            )
        field = spec["columns"]["field"]
        pf_ode_models = ode_nll_models(cfg)
        _check_row_labels(spec, rel)
        for r, row in enumerate(spec.get("rows", [])):
            if "unavailable" in row:
                continue
            models = {**cfg["models"], ORACLE_MODEL: None} if oracle else cfg["models"]
            for key, table in (("model", models), ("sampler", cfg["samplers"])):
                if key in row and row[key] not in table and not (key == "sampler" and row[key] == PF_ODE):
                    raise ConfigError(
                        f"table spec {rel}: rows[{r}] ({row.get('label')!r}) names unknown {key} {row[key]!r}; "
                        f"the config defines {sorted(table)}"
                    )
            for value in spec["columns"]["values"]:
                if str(value) in {str(k) for k in row.get("unavailable_at", {})}:
                    continue
                selected = {**row, field: value}
                if metric == "ode_nll_bpd":
                    if selected.get("model") not in pf_ode_models or selected.get("sampler", PF_ODE) != PF_ODE:
                        raise ConfigError(
                            f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at "
                            f"{field}={value} selects model={selected.get('model')!r}, "
                            f"sampler={selected.get('sampler')!r}; PF-ODE likelihoods exist for sampler "
                            f"{PF_ODE!r} of models {pf_ode_models} (continuous-time models, with metrics.ode_nll)"
                        )
                    continue
                cell = (selected.get("model"), selected.get("sampler"), selected.get("K"))
                # An oracle row runs the samplers of oracle.model on the mixture: its cells are that model's.
                if oracle and cell[0] == ORACLE_MODEL:
                    cell = (cfg["oracle"]["model"], *cell[1:])
                if cell not in defined:
                    raise ConfigError(
                        f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at "
                        f"{spec['columns']['field']}={value} refers to cell model={cell[0]!r}, "
                        f"sampler={cell[1]!r}, K={cell[2]!r}, which no experiment defines"
                    )


def _check_row_labels(spec: dict, rel: str) -> None:
    """Two rows with one label would print as two lines a reader cannot tell apart."""
    first: dict[str, int] = {}
    for r, row in enumerate(spec.get("rows", [])):
        label = row.get("label")
        if label in first:
            raise ConfigError(
                f"table spec {rel}: rows[{r}] repeats the label {label!r} of rows[{first[label]}]; "
                "each row of a table needs its own label"
            )
        first[label] = r


def load_config(path: Path | str, *, root: Path | None = None, check_paths: bool = True) -> dict:
    """Read and validate a config file (table spec paths are relative to ``root``, default the cwd)."""
    return validate_config(read_yaml(Path(path)), root=root or Path("."), check_paths=check_paths)


def cells(cfg: dict) -> list[Cell]:
    """Every (model, sampler, K) the experiments ask for, in a stable order, without duplicates."""
    seen: dict[Cell, None] = {}
    for exp in cfg["experiments"]:
        for s in exp["samplers"]:
            for K in exp["K"]:
                seen[Cell(exp["model"], s, K)] = None
    return list(seen)


# Each shard is a job (and its features another) in every cell: beyond this, Snakemake's DAG of a paper
# profile grows past what it plans in minutes.
MAX_SHARDS_PER_CELL = 1000


def _check_shard_count(cfg: dict) -> None:
    n, size = cfg["sampling"]["n_samples"], cfg["sampling"]["shard_size"]
    shards = -(-n // size)
    if shards > MAX_SHARDS_PER_CELL:
        raise ConfigError(
            f"config key 'sampling.shard_size': value {size} splits n_samples={n} into {shards} shards per cell; "
            f"at most {MAX_SHARDS_PER_CELL} are allowed, so shard_size must be at least {-(-n // MAX_SHARDS_PER_CELL)}"
        )


def shard_ranges(cfg: dict) -> list[tuple[int, int]]:
    """[start, stop) sample indices of each shard; sample i always gets seed ``sampling.seed + i``."""
    n, size = cfg["sampling"]["n_samples"], cfg["sampling"]["shard_size"]
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def state_dtype_name(cfg: dict) -> str:
    """The config's sampling.state_dtype, or the default when it names none."""
    return cfg["sampling"].get("state_dtype", DEFAULT_STATE_DTYPE)


def sampling_speed(cfg: dict) -> dict[str, Any]:
    """The config's sampling.speed with every option present (bench.runtime.speed.SpeedOptions' defaults, all off)."""
    return SpeedOptions(**cfg["sampling"].get("speed", {})).as_dict()


def _check_coupled_blocks(cfg: dict) -> None:
    from bench.samplers import validation

    used = {s for exp in cfg["experiments"] for s in exp["samplers"]}
    n, size = cfg["sampling"]["n_samples"], cfg["sampling"]["shard_size"]
    _sampler_check(validation.check_coupled_blocks, cfg["samplers"], used, n, size)


def _check_sampling_speed(cfg: dict) -> None:
    try:
        sampling_speed(cfg)
    except ValueError as err:  # a combination the schema cannot express (SpeedOptions.__post_init__)
        raise ConfigError(f"config key 'sampling.speed': {err}") from None


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the config (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
