"""DDIM sampling with the eta family of variances (Song et al. 2021, Eq. 12 and Eq. 16)."""

from __future__ import annotations

import torch

from bench.core.denoiser import Prediction, predict
from bench.core.noise import NoiseSource
from bench.core.options import NonNegative
from bench.samplers.ddpm import NoiseAt, gaussian_noise_at
from bench.samplers.spec import PeerSpec, SamplerSpec


def generalized(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    noise_at: NoiseAt,
    eta: float,
    clip_x0: bool,
    eps_from_clipped_x0: bool = True,
):
    """DDIM Eq. 12 with sigma(eta) of Eq. 16 for any unit-variance noise z (Gaussian here, Gamma or mixture in DDGM)."""
    if eta < 0:
        raise ValueError(f"DDIM eta={eta!r} must be non-negative")
    c_x0, c_eps, sigma = step_coefficients(denoiser.alpha_bars[grid], eta)
    return generalized_steps(
        denoiser, x_T, grid, noise_at, c_x0, c_eps, sigma, clip_x0, eps_from_clipped_x0=eps_from_clipped_x0
    )


def generalized_steps(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    noise_at: NoiseAt,
    c_x0: list[float],
    c_eps: list[float],
    sigma: list[float],
    clip_x0: bool,
    *,
    eps_from_clipped_x0: bool = True,
) -> torch.Tensor:
    """x_s = c_x0 x0_hat + c_eps eps_hat + sigma z with the coefficients of each move grid[k] -> grid[k - 1] at k - 1.

    DDIM's (Eq. 12) or Analytic-DDIM's. Noise is drawn only when some sigma is positive. A repeated
    timestep (DDIM's quad grid, bench.core.time_grids.REPEATING_GRIDS) is a zero-length step, as in DDIM's
    generalized_steps: the network is called (and counted), x stays as it is, no noise is added.
    With ``clip_x0``, eps_hat is the one implied by the clipped x0_hat (``eps_from_clipped_x0``) or the
    network's own; with the network's own, a repeated timestep moves x to sqrt(a) clip(x0_hat) +
    sqrt(1 - a) eps_hat, as Analytic-DPM's reverse_ddim_naive does at s = r (its update is not skipped).
    """
    abar = denoiser.alpha_bars[grid]
    stochastic = any(s > 0 for s in sigma)
    steps = grid.tolist()
    x = x_T
    for k in range(len(steps) - 1, 0, -1):
        pred = predict(denoiser, x, steps[k], abar[k], clip_x0=clip_x0 and eps_from_clipped_x0)
        if clip_x0 and not eps_from_clipped_x0:
            pred = Prediction(eps=pred.eps, x0=pred.x0.clamp(-1.0, 1.0))
        if steps[k] == steps[k - 1] and (eps_from_clipped_x0 or not clip_x0):
            continue  # DDIM's update at a_s = a_t returns x up to rounding: keep it exactly
        # c_x0 x0 + c_eps eps (+ sigma z), left to right, in one fresh buffer.
        x = torch.mul(pred.x0, c_x0[k - 1]).add_(pred.eps, alpha=c_eps[k - 1])
        if stochastic:
            x = x.add_(noise_at(k, steps[k - 1]), alpha=sigma[k - 1])
    return predict(denoiser, x, steps[0], abar[0], clip_x0=clip_x0).x0


def step_coefficients(abar: torch.Tensor, eta: float) -> tuple[list[float], list[float], list[float]]:
    """(sqrt(a_s), sqrt(1 - a_s - sigma^2), sigma) of each move grid[k] -> grid[k - 1] (Eqs. 12, 16), once per grid."""
    a_t, a_s = abar[1:], abar[:-1]
    sigma = eta * torch.sqrt((1 - a_s) / (1 - a_t)) * torch.sqrt((1 - a_t / a_s).clamp_min(0.0))
    return torch.sqrt(a_s).tolist(), torch.sqrt(1 - a_s - sigma**2).tolist(), sigma.tolist()


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    eta: NonNegative = 0.0,
    clip_x0: bool = False,
    eps_from_clipped_x0: bool = True,
) -> torch.Tensor:
    """x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z (DDIM Eq. 12), sigma = sigma_t(eta) of DDIM Eq. 16.

    With ``clip_x0``, eps is the one implied by the clipped x0 (iDDPM's ddim_sample, gaussian_diffusion.py
    L504) or, ``eps_from_clipped_x0: false``, the network's own (Analytic-DPM's
    cifar_imagenet_codes/core/inference/sampler/reverse_ddim.py L37-40, reverse_ddim_naive).
    """
    return generalized(denoiser, x_T, grid, gaussian_noise_at(noise), eta, clip_x0, eps_from_clipped_x0)


SPEC = SamplerSpec(
    "ddim", sample, "discrete", lambda K, o: K, zero_length_steps=True,
    peer=PeerSpec("DDIMScheduler", "uniform", {"eta": 0.0, "clip_x0": False}, deterministic=True),
)
