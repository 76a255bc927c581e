"""The cells a config asks for, their shards, the sampler state dtype and speed options, and the config hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bench.config.schema import ConfigError, sampler_check
from bench.runtime.speed import SpeedOptions
from bench.steps.paths import cell_key

# The sampler state's dtypes (the schema's sampling.state_dtype) and the one a config without it gets.
STATE_DTYPES = ("float32", "float64")


DEFAULT_STATE_DTYPE = "float32"


@dataclass(frozen=True)
class Cell:
    """One experiment: a model sampled by one sampler with K steps."""

    model: str
    sampler: str
    K: int

    @property
    def key(self) -> str:
        return cell_key(self.model, self.sampler, self.K)


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


def check_shard_count(cfg: dict) -> None:
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


def check_coupled_blocks(cfg: dict) -> None:
    from bench.samplers import validation

    used = {s for exp in cfg["experiments"] for s in exp["samplers"]}
    n, size = cfg["sampling"]["n_samples"], cfg["sampling"]["shard_size"]
    sampler_check(validation.check_coupled_blocks, cfg["samplers"], used, n, size)


def check_sampling_speed(cfg: dict) -> None:
    try:
        sampling_speed(cfg)
    except ValueError as err:  # a combination the schema cannot express (SpeedOptions.__post_init__)
        raise ConfigError(f"config key 'sampling.speed': {err}") from None


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the config (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
