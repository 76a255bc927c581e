"""DDIM sampling with the eta family of variances (Song et al. 2021, Eq. 12 and Eq. 16)."""

from __future__ import annotations

import torch

from bench.families import predict
from bench.noise import NoiseSource
from bench.samplers.ddpm import NoiseAt


def generalized(denoiser, x_T: torch.Tensor, grid: torch.Tensor, noise_at: NoiseAt, eta: float, clip_x0: bool):
    """DDIM Eq. 12 with sigma(eta) of Eq. 16 for any unit-variance noise z (Gaussian here, Gamma or mixture in DDGM).

    A repeated timestep (DDIM's quad grid, bench.grids.REPEATING_GRIDS) is a zero-length step, as in
    DDIM's generalized_steps: the network is called (and counted), x stays as it is, no noise is added
    (sigma = 0 there for every eta).
    """
    if eta < 0:
        raise ValueError(f"DDIM eta={eta!r} must be non-negative")
    abar = denoiser.alpha_bars[grid]
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = predict(denoiser, x, int(grid[k]), abar[k], clip_x0=clip_x0)
        if k == 0:
            x = pred.x0
            break
        if grid[k] == grid[k - 1]:
            continue  # DDIM's update at a_s = a_t returns x up to rounding: keep it exactly
        a_t, a_s = abar[k], abar[k - 1]
        sigma = eta * torch.sqrt((1 - a_s) / (1 - a_t)) * torch.sqrt((1 - a_t / a_s).clamp_min(0.0))
        x = torch.sqrt(a_s) * pred.x0 + torch.sqrt(1 - a_s - sigma**2) * pred.eps
        if eta > 0:
            x = x + sigma * noise_at(k, int(grid[k - 1]))
    return x


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    eta: float = 0.0,
    clip_x0: bool = False,
) -> torch.Tensor:
    """x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z (DDIM Eq. 12), sigma = sigma_t(eta) of DDIM Eq. 16."""
    return generalized(denoiser, x_T, grid, lambda k, s: noise.normal(k), eta, clip_x0)
