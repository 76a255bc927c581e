"""Where a config's models and reference statistics come from, and the user data folders it names."""

from __future__ import annotations

from pathlib import Path

from bench.checkpoints.references import DEFAULT_MODE, load_references
from bench.config.schema import ConfigError, need


def check_published_reference(name: str, extractor: dict) -> None:
    """Published statistics exist in the registry and come from the extractor's Inception mode."""
    stats = load_references().statistics
    need(name, stats, "metrics.fd_is.reference_stats", "reference statistics")
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


def check_model_source(name: str, model: dict, registry: dict) -> None:
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
