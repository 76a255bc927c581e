"""DDPM ancestral sampling on any sub-grid of the chain (Ho et al. 2020, Alg. 2; iDDPM respacing)."""

from __future__ import annotations

import torch

from bench.families import predict
from bench.noise import NoiseSource
from bench.schedules import posterior_coefficients

VARIANCES = ("beta", "beta_tilde")


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
    if variance not in VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} is not one of {list(VARIANCES)}")
    abar = denoiser.alpha_bars[grid]
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = predict(denoiser, x, int(grid[k]), abar[k], clip_x0=clip_x0)
        if k == 0:
            x = pred.x0
            break
        c0, ct, beta_tilde = posterior_coefficients(abar[k - 1], abar[k])
        var = beta_tilde if variance == "beta_tilde" else 1.0 - abar[k] / abar[k - 1]
        x = c0 * pred.x0 + ct * x + torch.sqrt(var) * noise.normal(k)
    return x
