"""One sampling job: a shard of a cell's samples, written atomically with what made it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.data.digits import unit_to_levels
from bench.device import cpu_choice
from bench.edm import SIGMA_GRIDS, DiscreteVPAsSigma, sigma_grid
from bench.families import DiscreteEpsDenoiser, NonFiniteOutputError
from bench.grids import MOMENT_GRIDS, time_grid, trajectory_variance
from bench.io import atomic_npz
from bench.models import make_denoiser
from bench.noise import NoiseSource
from bench.samplers import LEVEL_SAMPLERS, VP_SDE_SAMPLERS, get_sampler
from bench.stepclock import StepClock

if TYPE_CHECKING:
    from bench.analytic import BoundTerms


class NonFiniteSampleError(RuntimeError):
    """A sampler produced NaN or Inf: no metric may be computed from such a cell."""


def sigma_view(denoiser):
    """The denoiser in EDM's sigma space: the family's own view where it has one, else the discrete VP chain's."""
    own = getattr(denoiser, "as_sigma_denoiser", None)
    return own() if own is not None else DiscreteVPAsSigma(denoiser)


def sampler_view(
    denoiser, sampler: dict, K: int, *, gamma: torch.Tensor | None = None, bound_terms: BoundTerms | None = None
) -> tuple[object, torch.Tensor]:
    """(what the sampler calls, its realised grid) for K steps of ``sampler`` on a family's denoiser.

    Level samplers (annealed Langevin, PC) get the model's score on the K levels of the sampler's
    sigma grid, spanning the model's own [sigma_min, sigma_max] unless grid_options say otherwise
    (NCSN's levels are the model's), and the indices 0..K-1. EDM's samplers get the sigma view
    and the sigma grid (EDM Table 2); discrete samplers the chain and its time grid (``gamma`` and
    ``bound_terms``, the model's moments, for grids that need them: the optimal trajectory of the
    sampler's variance, bench.grids.trajectory_variance).
    """
    options = sampler.get("grid_options", {})
    if sampler["fn"] in LEVEL_SAMPLERS:
        view = sigma_view(denoiser)
        options = {"sigma_min": view.sigma_min, "sigma_max": view.sigma_max, **options}
        levels = sigma_grid(sampler["grid"], K, denoiser=view, **options)[:-1].flip(0)
        return denoiser.with_levels(levels), torch.arange(K)
    if sampler["fn"] in VP_SDE_SAMPLERS:
        from bench.vpsde import SAMPLING_EPS, VPSDE, VPTimeScore

        sde = VPSDE(**{k: v for k, v in options.items() if k in ("beta_min", "beta_max")})
        view = VPTimeScore(sigma_view(denoiser), sde)
        times = sde.time_grid(K, options.get("eps", SAMPLING_EPS))
        view.check_times(times[:-1])
        return view, times
    if sampler["grid"] in SIGMA_GRIDS:
        view = sigma_view(denoiser)
        return view, sigma_grid(sampler["grid"], K, denoiser=view, **options)
    if sampler["grid"] in MOMENT_GRIDS:
        options = {**options, "bound_terms": bound_terms, "variance": trajectory_variance(sampler)}
    grid = time_grid(sampler["grid"], denoiser.schedule.T, K, alpha_bars=denoiser.alpha_bars, gamma=gamma, **options)
    return denoiser, grid


def generate(
    denoiser: DiscreteEpsDenoiser,
    sampler: dict,
    K: int,
    seeds: torch.Tensor,
    shape: tuple[int, ...],
    *,
    batch_size: int,
    context: str = "",
    first_index: int = 0,
    device: torch.device | str = "cpu",
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    state_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ([N, *shape] in ``state_dtype``, on ``device``, the network's) for ``seeds``; returns (samples, grid).

    The realised grid of a level sampler is its levels in the order visited (descending sigmas).

    ``first_index`` is the cell-wide index of ``seeds[0]``, so errors name the sample in the cell;
    ``gamma`` and ``bound_terms`` are the model's moments, for grids chosen from them (bench.grids.MOMENT_GRIDS).
    """
    fn = get_sampler(sampler["fn"])
    model, grid = sampler_view(denoiser, sampler, K, gamma=gamma, bound_terms=bound_terms)
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        noise = NoiseSource(batch, shape, state_dtype, device)
        x_T = model.prior(noise, grid) if hasattr(model, "prior") else noise.latent()
        try:
            x = fn(model, x_T, grid, noise=noise, **sampler.get("options", {}))
        except NonFiniteOutputError as err:
            raise NonFiniteSampleError(
                f"{context}: network output is not finite at step {err.step} (timestep index) for sample index "
                f"{first_index + start + err.index} (seed {int(batch[err.index])})"
            ) from None
        bad = ~torch.isfinite(x.reshape(len(batch), -1)).all(dim=1)
        if bad.any():
            idx = int(torch.nonzero(bad)[0])
            raise NonFiniteSampleError(
                f"{context}: final sample is not finite for sample index {first_index + start + idx} "
                f"(seed {int(batch[idx])})"
            )
        out.append(x)
    realised = model.sigmas[grid].flip(0) if sampler["fn"] in LEVEL_SAMPLERS else grid
    return torch.cat(out), realised


def sample_shard(
    net: torch.nn.Module,
    schedule,
    sampler: dict,
    K: int,
    start: int,
    stop: int,
    *,
    base_seed: int,
    shape: tuple[int, ...],
    max_level: int,
    batch_size: int,
    state_dtype: torch.dtype = torch.float32,
    out_path: Path,
    context: str,
    family: str = "ddpm",
    clock: StepClock | None = None,
    noise: dict | None = None,
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    speed: dict[str, Any] | None = None,
) -> Path:
    """Sample indices [start, stop) with seeds base_seed + i, quantise to integer levels, save .npz.

    Sampling runs on the network's device. ``clock`` (default: one started now on the CPU) gives the
    shard's device, wall_seconds and device_seconds. A cell whose samples are not finite gets a
    failure record instead (``error`` holds the message, no images), so no metric is ever computed
    from it while the rest of the DAG goes on. ``gamma``, ``bound_terms``, ``state_dtype``: as in generate.
    ``speed``: the record of the speed options applied to ``net`` (bench.speed.apply_speed_options), kept
    as JSON in the shard (``null``: none recorded).
    """
    clock = clock or StepClock(cpu_choice())
    denoiser = make_denoiser(family, net, schedule, shape, noise=noise)
    seeds = torch.arange(start, stop, dtype=torch.int64) + base_seed
    # The job log shows when sampling (the long part of a job) starts, after the model has loaded.
    print(f"{context}: sampling indices [{start}, {stop}) in batches of {batch_size}", file=sys.stderr, flush=True)
    try:
        with torch.inference_mode():
            x, grid = generate(
                denoiser, sampler, K, seeds, shape, batch_size=batch_size, context=context, first_index=start,
                device=next(net.parameters()).device, gamma=gamma, bound_terms=bound_terms,
                state_dtype=state_dtype,
            )
    except NonFiniteSampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return atomic_npz(out_path, error=np.array(str(err)), seeds=seeds.numpy())
    images = unit_to_levels(x.cpu().numpy(), max_level)
    n_batches = -(-len(seeds) // batch_size)
    timing = clock.record()
    return atomic_npz(
        out_path,
        images=images,
        seeds=seeds.numpy(),
        max_level=np.int64(max_level),
        grid=grid.cpu().numpy(),
        nfe=np.int64(denoiser.nfe // n_batches),
        wall_seconds=np.float64(timing["wall_seconds"]),
        device_seconds=np.float64(timing["device_seconds"]),
        device_clock=np.array(timing["device_clock"]),
        device=np.array(timing["device"]),
        device_detail=np.array(timing["device_detail"]),
        speed=np.array(json.dumps(speed, sort_keys=True)),
    )
