"""DDGM's samplers with the noise law given as options, for denoisers that carry none (the pipeline's
bench.samplers.ddgm reads the law from the ddgm family's denoiser)."""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.methods.ddgm import DEFAULT_PROPOSALS, DEFAULT_THETA_0
from bench.samplers.ddgm import gamma_noise_at, mixture_noise_at
from bench.samplers.ddim import generalized
from bench.samplers.ddpm import Variance, ancestral


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    theta_0: float = DEFAULT_THETA_0,
    k_convention: str = "code",
    variance: Variance = "beta",
    clip_x0: bool = True,
    proposals: int = DEFAULT_PROPOSALS,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma z, z = (gbar_s - kbar_s theta_s) / sqrt(1 - abar_s) (Alg 4)."""
    noise_at = gamma_noise_at(denoiser, noise, theta_0, k_convention, proposals)
    return ancestral(denoiser, x_T, grid, noise_at, variance, clip_x0)


def sample_ddim(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    theta_0: float = DEFAULT_THETA_0,
    k_convention: str = "code",
    eta: float = 0.0,
    clip_x0: bool = False,
    proposals: int = DEFAULT_PROPOSALS,
) -> torch.Tensor:
    """DDIM Eq. 12, sigma(eta), z the normalised centred Gamma noise (code: generalized_gamma)."""
    noise_at = gamma_noise_at(denoiser, noise, theta_0, k_convention, proposals)
    return generalized(denoiser, x_T, grid, noise_at, eta, clip_x0)


def sample_mixture(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    phi2: float,
    p: float = 0.5,
    phi2_end: float | None = None,
    variance: Variance = "beta",
    clip_x0: bool = True,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma eps, eps ~ p N(mu_1, phi_s^2) + (1 - p) N(mu_2, phi_s^2)."""
    noise_at = mixture_noise_at(denoiser, noise, phi2, p, phi2_end)
    return ancestral(denoiser, x_T, grid, noise_at, variance, clip_x0)


def sample_mixture_ddim(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    phi2: float,
    p: float = 0.5,
    phi2_end: float | None = None,
    eta: float = 0.0,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM Eq. 12 with sigma(eta) and z two-Gaussian mixture noise (zero mean, unit variance, phi_s^2)."""
    return generalized(denoiser, x_T, grid, mixture_noise_at(denoiser, noise, phi2, p, phi2_end), eta, clip_x0)
