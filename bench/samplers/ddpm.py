"""DDPM ancestral sampling on any sub-grid of the chain (Ho et al. 2020, Alg. 2; iDDPM respacing)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.families import predict
from bench.noise import NoiseSource
from bench.schedules import posterior_coefficients

VARIANCES = ("beta", "beta_tilde")


# noise_at(k, s): the unit-variance noise of sampler step k whose target is chain step s.
NoiseAt = Callable[[int, int], torch.Tensor]


def ancestral(denoiser, x_T: torch.Tensor, grid: torch.Tensor, noise_at: NoiseAt, variance: str, clip_x0: bool):
    """x_s = mu(x_t, x0_hat) + sigma z for any unit-variance noise z (Gaussian here, Gamma or mixture in DDGM).

    A repeated timestep (bench.grids.REPEATING_GRIDS) is a zero-length step: one network call, x unchanged.
    """
    if variance not in VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} is not one of {list(VARIANCES)}")
    abar = denoiser.alpha_bars[grid]
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = predict(denoiser, x, int(grid[k]), abar[k], clip_x0=clip_x0)
        if k == 0:
            x = pred.x0
            break
        if grid[k] == grid[k - 1]:
            # A repeated timestep (DDIM's quad grid): DDIM's ddpm_steps has beta_{t|s} = 0 there, so its
            # mean is x and its variance 0: one network call, x unchanged.
            continue
        c0, ct, beta_tilde = posterior_coefficients(abar[k - 1], abar[k])
        var = beta_tilde if variance == "beta_tilde" else 1.0 - abar[k] / abar[k - 1]
        x = c0 * pred.x0 + ct * x + torch.sqrt(var) * noise_at(k, int(grid[k - 1]))
    return x


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    variance: str = "beta",
    clip_x0: bool = True,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma z, sigma^2 = beta_{t|s} or beta-tilde_{t|s} (DDPM Sec. 3.2), mean at the end."""
    return ancestral(denoiser, x_T, grid, lambda k, s: noise.normal(k), variance, clip_x0)
