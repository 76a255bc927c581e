"""Which registered samplers python -m bench perf runs on a plain eps denoiser, and their peer loops in diffusers."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.runtime.speed import inference_context
from bench.samplers import SAMPLER_SPECS, SAMPLERS
from bench.samplers.spec import PeerSpec

SCHEDULE = ("linear", 1000)


# Our sampler options are the embedded config's (workflows/config/default.yaml: ddpm_beta, ddim_eta0).
PEERS = {name: spec.peer for name, spec in SAMPLER_SPECS.items() if spec.peer is not None}
DEFAULT_GRID = "uniform"


@dataclass(frozen=True)
class SamplerPlan:
    """A sampler to measure (skip == '') or to list with the reason it is skipped."""

    name: str
    fn: Callable | None
    grid: str
    options: dict[str, Any]
    peer: PeerSpec | None
    skip: str = ""


def plan_samplers(names: tuple[str, ...] | None = None) -> list[SamplerPlan]:
    """Every registered sampler (or those named), each either runnable on a plain eps network or skipped with a note.

    A sampler is skipped when its signature has required options, or when a 2-step trial on a
    tiny eps network raises or gives no finite sample of the right shape.
    """
    plans = []
    for name in names if names is not None else tuple(SAMPLERS):
        fn = SAMPLERS[name]
        peer = PEERS.get(name)
        grid = peer.grid if peer else DEFAULT_GRID
        options = dict(peer.options) if peer else {}
        required = _required_options(fn)
        if required:
            skip = f"skipped: needs option(s) {', '.join(required)}"
        else:
            skip = _trial(fn, grid, options)
        plans.append(SamplerPlan(name, fn, grid, options, peer, skip))
    return plans


def _required_options(fn: Callable) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[3:]
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.name != "noise"
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _trial(fn: Callable, grid_kind: str, options: dict[str, Any]) -> str:
    from bench.core.noise import NoiseSource
    from bench.nets.mlp import MLPDenoiser

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLPDenoiser(width=8, depth=1, emb_dim=4).eval().requires_grad_(False)
    schedule = DiscreteSchedule.named(*SCHEDULE)
    denoiser = DiscreteEpsDenoiser(net, schedule)
    noise = NoiseSource(torch.arange(2), (1, 8, 8), torch.float64, "cpu")
    # Any failure means the sampler needs another denoiser interface: report it, do not stop.
    try:
        with inference_context():
            x = fn(denoiser, noise.latent(), time_grid(grid_kind, schedule.T, 2), noise=noise, **options)
    except Exception as err:
        return f"skipped: does not run on a plain eps denoiser ({type(err).__name__}: {err})"
    if not isinstance(x, torch.Tensor) or x.shape != (2, 1, 8, 8) or not torch.isfinite(x).all() or not denoiser.nfe:
        return "skipped: no finite sample of the input's shape from a plain eps denoiser"
    return ""


def diffusers_version() -> str:
    try:
        return importlib.import_module("diffusers").__version__
    except ImportError:
        return ""


def peer_loop(
    spec: PeerSpec, net: nn.Module, schedule: DiscreteSchedule, grid: torch.Tensor, x_T: torch.Tensor, *, seed: int
) -> Callable[[], torch.Tensor]:
    """A function running diffusers' ``set_timesteps`` + ``step`` loop from x_T (float32, as diffusers keeps it)."""
    import diffusers

    options = spec.options
    common = {
        "num_train_timesteps": schedule.T,
        "trained_betas": schedule.betas.numpy(),
        "clip_sample": options["clip_x0"],
        "prediction_type": "epsilon",
    }
    step_kwargs: dict[str, Any] = {}
    if spec.scheduler == "DDIMScheduler":
        scheduler = diffusers.DDIMScheduler(
            **common, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
        scheduler.set_timesteps(len(grid))
        step_kwargs["eta"] = options["eta"]
    elif spec.scheduler == "DDPMScheduler":
        variance_type = {"beta": "fixed_large", "beta_tilde": "fixed_small"}[options["variance"]]
        scheduler = diffusers.DDPMScheduler(**common, variance_type=variance_type)
        scheduler.set_timesteps(timesteps=grid.flip(0).tolist())
    else:
        raise ValueError(f"peer scheduler {spec.scheduler!r} is not one of ['DDIMScheduler', 'DDPMScheduler']")
    timesteps = scheduler.timesteps.cpu()
    if not torch.equal(timesteps, grid.flip(0)):
        raise ValueError(
            f"diffusers' {spec.scheduler} visits {timesteps.tolist()}, not our grid {grid.flip(0).tolist()}: "
            "pick steps so that the grids agree (for DDIM's leading spacing, a divisor of T)"
        )
    x_start = x_T.to(torch.float32)
    generator = torch.Generator(x_T.device).manual_seed(seed)
    batch = x_T.shape[0]

    def run() -> torch.Tensor:
        x = x_start
        for t in scheduler.timesteps:
            eps = net(x, torch.full((batch,), float(t), device=x.device))
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        return x

    return run
