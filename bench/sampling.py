"""One sampling job: a shard of a cell's samples, written atomically with what made it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.data.digits import unit_to_levels
from bench.edm import SIGMA_GRIDS, DiscreteVPAsSigma, sigma_grid
from bench.families import DiscreteEpsDenoiser, NonFiniteOutputError
from bench.grids import time_grid
from bench.io import atomic_npz
from bench.models import make_denoiser
from bench.noise import NoiseSource
from bench.samplers import get_sampler


class NonFiniteSampleError(RuntimeError):
    """A sampler produced NaN or Inf: no metric may be computed from such a cell."""


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
    gamma: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (float64 [N, *shape]) for ``seeds``; returns (samples, realised grid).

    ``first_index`` is the cell-wide index of ``seeds[0]``, so errors name the sample in the cell;
    ``gamma`` is the model's Gamma_n, for grids chosen from it (bench.grids.MOMENT_GRIDS).
    """
    fn = get_sampler(sampler["fn"])
    model = denoiser
    if sampler["grid"] in SIGMA_GRIDS:
        # EDM-type samplers see the discrete chain in sigma space (EDM Table 2, VP models); x_T ~ N(0, sigma_0^2 I).
        model = DiscreteVPAsSigma(denoiser)
        grid = sigma_grid(sampler["grid"], K, denoiser=model, **sampler.get("grid_options", {}))
        scale = grid[0]
    else:
        grid = time_grid(
            sampler["grid"],
            denoiser.schedule.T,
            K,
            alpha_bars=denoiser.alpha_bars,
            gamma=gamma,
            **sampler.get("grid_options", {}),
        )
        scale = 1.0
    out = []
    for start in range(0, len(seeds), batch_size):
        batch = seeds[start : start + batch_size]
        noise = NoiseSource(batch, shape, torch.float64, "cpu")
        try:
            x = fn(model, noise.latent() * scale, grid, noise=noise, **sampler.get("options", {}))
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
    return torch.cat(out), grid


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
    out_path: Path,
    context: str,
    family: str = "ddpm",
    gamma: torch.Tensor | None = None,
) -> Path:
    """Sample indices [start, stop) with seeds base_seed + i, quantise to integer levels, save .npz.

    A cell whose samples are not finite gets a failure record instead (``error`` holds the message,
    no images), so no metric is ever computed from it while the rest of the DAG goes on. ``gamma``: as
    in generate.
    """
    denoiser = make_denoiser(family, net, schedule)
    seeds = torch.arange(start, stop, dtype=torch.int64) + base_seed
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            x, grid = generate(
                denoiser,
                sampler,
                K,
                seeds,
                shape,
                batch_size=batch_size,
                context=context,
                first_index=start,
                gamma=gamma,
            )
    except NonFiniteSampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return atomic_npz(out_path, error=np.array(str(err)), seeds=seeds.numpy())
    wall = time.perf_counter() - t0
    n_batches = -(-len(seeds) // batch_size)
    return atomic_npz(
        out_path,
        images=unit_to_levels(x.numpy(), max_level),
        seeds=seeds.numpy(),
        max_level=np.int64(max_level),
        grid=grid.numpy(),
        nfe=np.int64(denoiser.nfe // n_batches),
        wall_seconds=np.float64(wall),
    )
