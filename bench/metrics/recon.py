"""DDIM's reconstruction error (Song et al. 2021, Table 2): encode with the DDIM ODE, decode, per-dimension MSE."""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.methods.ddim_inversion import encode
from bench.samplers import get_sampler


def unit_interval(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] data on DDIM's [0, 1] scale, clamped as every output of its code (datasets/__init__.py L206-215)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def reconstruction_mse(
    view, sampler: dict, x0: torch.Tensor, grid: torch.Tensor, seeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image mean squared error on [0, 1] (DDIM Sec. 5.4), the decoded images in [-1, 1]) of ``x0``.

    ``view`` and ``grid``: the sampler's view of the denoiser and its grid (bench.steps.sample.sampler_view);
    the decoder is ``sampler`` itself (deterministic: DDIM with eta = 0), so ``seeds`` only name the rows of
    a noise source it never draws from.
    """
    z = encode(view, x0, grid)
    noise = NoiseSource(seeds, tuple(x0.shape[1:]), x0.dtype, x0.device)
    decoded = get_sampler(sampler["fn"])(view, z, grid, noise=noise, **sampler.get("options", {}))
    err = (unit_interval(decoded) - unit_interval(x0)).to(torch.float64) ** 2
    return err.reshape(len(x0), -1).mean(dim=1), decoded
