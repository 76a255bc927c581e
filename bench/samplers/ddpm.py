"""DDPM ancestral sampling on any sub-grid of the chain (Ho et al. 2020, Alg. 2; iDDPM respacing)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from bench.core.denoiser import predict_x0
from bench.core.noise import NoiseSource
from bench.core.schedules import posterior_coefficients
from bench.methods.analytic import PAPER_PIXEL_QUANTUM, pixel_variance_threshold
from bench.samplers.spec import PeerSpec, SamplerSpec

Variance = Literal["beta", "beta_tilde"]
VARIANCES: tuple[str, ...] = get_args(Variance)


# noise_at(k, s): the unit-variance noise of sampler step k whose target is chain step s, a fresh
# tensor (the samplers scale it in place).
NoiseAt = Callable[[int, int], torch.Tensor]


def gaussian_noise_at(noise: NoiseSource) -> NoiseAt:
    """The standard normal noise of sampler step k (stream k + 1), whatever its target step."""
    return lambda k, s: noise.normal(k)


def ancestral(denoiser, x_T: torch.Tensor, grid: torch.Tensor, noise_at: NoiseAt, variance: str, clip_x0: bool):
    """x_s = mu(x_t, x0_hat) + sigma z for any unit-variance noise z (Gaussian here, Gamma or mixture in DDGM)."""
    if variance not in VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} is not one of {list(VARIANCES)}")
    c0, ct, sigma = step_coefficients(denoiser.alpha_bars[grid], variance)
    return ancestral_steps(denoiser, x_T, grid, noise_at, c0, ct, sigma, clip_x0)


def ancestral_steps(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    noise_at: NoiseAt,
    c0: list[float],
    ct: list[float],
    sigma: list[float],
    clip_x0: bool,
) -> torch.Tensor:
    """x_s = c0 x0_hat + ct x_t + sigma z with the coefficients of each move grid[k] -> grid[k - 1] at index k - 1.

    DDPM's posterior mean with its own variances, or with Analytic-DPM's. A repeated timestep
    (bench.core.time_grids.REPEATING_GRIDS) is a zero-length step: one network call, x unchanged.
    """
    steps = grid.tolist()
    x = x_T
    for k in range(len(steps) - 1, 0, -1):
        x0 = predict_x0(denoiser, x, steps[k], clip_x0=clip_x0)
        if steps[k] == steps[k - 1]:
            # A repeated timestep (DDIM's quad grid): DDIM's ddpm_steps has beta_{t|s} = 0 there, so its
            # mean is x and its variance 0: one network call, x unchanged.
            continue
        # c0 x0 + ct x + sigma z, summed left to right as written, in one fresh buffer (x0 may be an
        # inference tensor of the denoiser's, which no in-place op may touch outside inference mode).
        x = torch.mul(x0, c0[k - 1]).add_(x, alpha=ct[k - 1]).add_(noise_at(k, steps[k - 1]), alpha=sigma[k - 1])
    return predict_x0(denoiser, x, steps[0], clip_x0=clip_x0)


def step_coefficients(abar: torch.Tensor, variance: str) -> tuple[list[float], list[float], list[float]]:
    """(c0, ct, sigma) of every move grid[k] -> grid[k - 1] (index k - 1), DDPM Eqs. 6-7: computed once per grid."""
    c0, ct, beta_tilde = posterior_coefficients(abar[:-1], abar[1:])
    var = beta_tilde if variance == "beta_tilde" else 1.0 - abar[1:] / abar[:-1]
    return c0.tolist(), ct.tolist(), torch.sqrt(var).tolist()


def mean_coefficients(abar: torch.Tensor) -> tuple[list[float], list[float]]:
    """(c0, ct) of the posterior mean of every move grid[k] -> grid[k - 1] (index k - 1), DDPM Eq. 7."""
    c0, ct, _ = posterior_coefficients(abar[:-1], abar[1:])
    return c0.tolist(), ct.tolist()


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    variance: Variance = "beta",
    clip_x0: bool = True,
    clip_sigma_idx: int = 0,
    clip_pixel: float | None = None,
    pixel_quantum: float = PAPER_PIXEL_QUANTUM,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma z, sigma^2 = beta_{t|s} or beta-tilde_{t|s} (DDPM Sec. 3.2), mean at the end.

    As Analytic-DPM's reverse_ddpm_naive (core/inference/sampler/reverse_ddpm.py L46-50), the moves to
    timesteps below grid[clip_sigma_idx] have sigma^2 capped at (clip_pixel pixel_quantum sqrt(pi/2))^2
    (App. F.2); clip_sigma_idx = 0 caps none.
    """
    if variance not in VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} is not one of {list(VARIANCES)}")
    if isinstance(clip_sigma_idx, bool) or not isinstance(clip_sigma_idx, int) or not 0 <= clip_sigma_idx < len(grid):
        raise ValueError(f"clip_sigma_idx={clip_sigma_idx!r} must be an integer in [0, K={len(grid)})")
    c0, ct, sigma = step_coefficients(denoiser.alpha_bars[grid], variance)
    if clip_sigma_idx > 0:
        if clip_pixel is None:
            raise ValueError(f"clip_sigma_idx={clip_sigma_idx} caps sigma at clip_pixel pixels: give clip_pixel")
        cap = math.sqrt(pixel_variance_threshold(clip_pixel, pixel_quantum))
        bound = int(grid[clip_sigma_idx])
        sigma = [min(sd, cap) if int(s) < bound else sd for sd, s in zip(sigma, grid[:-1].tolist(), strict=True)]
    return ancestral_steps(denoiser, x_T, grid, gaussian_noise_at(noise), c0, ct, sigma, clip_x0)


SPEC = SamplerSpec(
    "ddpm", sample, "discrete", lambda K, o: K, trajectory_variance="option", zero_length_steps=True,
    peer=PeerSpec("DDPMScheduler", "even", {"variance": "beta", "clip_x0": True}, deterministic=False),
)
