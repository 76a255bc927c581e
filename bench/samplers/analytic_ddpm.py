"""Analytic-DDPM: DDPM ancestral sampling with the analytic optimal reverse variance (Bao et al. 2022)."""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.core.options import Positive
from bench.methods.analytic import PAPER_PIXEL_QUANTUM, sampling_variances
from bench.samplers.ddpm import ancestral_steps, gaussian_noise_at, mean_coefficients
from bench.samplers.spec import SamplerSpec


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    gamma: torch.Tensor,
    clip: bool = True,
    sigma2_clip_pixel: Positive | None = None,
    pixel_quantum: Positive = PAPER_PIXEL_QUANTUM,
    clip_x0: bool = True,
) -> torch.Tensor:
    """x_s = mu-tilde_{s|t}(x_t, x0_hat) + sigma-hat z, sigma-hat^2 of Eq. 9 on the pair with lambda^2 = beta-tilde.

    ``gamma`` [T] is the mean square of eps (bench.methods.analytic.estimate_gamma); ``clip`` clips the
    variance to Theorem 2's bounds; ``sigma2_clip_pixel`` = y caps the variance of the step to tau_1
    at (y pixel_quantum sqrt(pi/2))^2 (App. F.2; the paper's quantum is 2/255, digits' is 2/16).
    The last step returns the mean x0_hat, without noise.
    """
    var = sampling_variances(
        denoiser.alpha_bars,
        grid,
        gamma,
        form="ddpm",
        clip=clip,
        sigma2_clip_pixel=sigma2_clip_pixel,
        pixel_quantum=pixel_quantum,
    )
    c0, ct = mean_coefficients(denoiser.alpha_bars[grid])
    sigma = torch.sqrt(var).tolist()
    return ancestral_steps(denoiser, x_T, grid, gaussian_noise_at(noise), c0, ct, sigma, clip_x0)


# Gamma_n comes as the required ``gamma`` input (the config's inputs: {gamma: moments}).
SPEC = SamplerSpec("analytic_ddpm", sample, "discrete", lambda K, o: K, trajectory_variance="analytic")
