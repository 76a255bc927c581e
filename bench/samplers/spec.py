"""What the pipeline knows about a sampler, declared once beside its function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def _uncoupled(options: Mapping[str, Any]) -> int:
    return 1


@dataclass(frozen=True)
class PeerSpec:
    """Which diffusers scheduler runs the same sampler, on which of our grids, with which options (perf)."""

    scheduler: str
    grid: str
    options: dict[str, Any]
    deterministic: bool


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler function and its facts: the registry, plan, validation, DAG inputs and perf read only this.

    ``space`` names the denoiser view the function calls (bench.core.spaces): a family applies to the sampler
    exactly when its denoiser offers that view. ``nfe(K, options)`` is the network evaluations per sample
    (a planning count; shards record the measured one). ``trajectory_variance`` names the variance whose
    optimal trajectory the sampler visits on a moments grid ("option": the entry's ``variance`` option),
    None where it has none. ``coupled_block(options)`` is how many consecutive samples one call couples.
    ``zero_length_steps``: it runs a repeated timestep as DDIM's loop does (bench.core.time_grids.REPEATING_GRIDS).
    ``takes_grid_range``: its sigma range is its grid's (bench.steps.sample.sampler_options).
    ``check_options(**options)``: refuses option combinations no annotation states, before any job runs.
    """

    name: str
    fn: Callable[..., Any]
    space: str
    nfe: Callable[[int, Mapping[str, Any]], int]
    trajectory_variance: str | None = None
    zero_length_steps: bool = False
    takes_grid_range: bool = False
    coupled_block: Callable[[Mapping[str, Any]], int] = _uncoupled
    check_options: Callable[..., None] | None = None
    peer: PeerSpec | None = None
