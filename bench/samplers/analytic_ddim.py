"""Analytic-DDIM: the DDIM (lambda = 0) mean with the analytic optimal reverse variance (Bao et al. 2022)."""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.core.options import Positive
from bench.methods.analytic import PAPER_PIXEL_QUANTUM, sampling_variances
from bench.samplers.ddim import generalized_steps
from bench.samplers.ddpm import gaussian_noise_at
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
    eps_from_clipped_x0: bool = False,
) -> torch.Tensor:
    """x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat + sigma-hat z (Eq. 13, lambda = 0), sigma-hat^2 of Eq. 9.

    Options as bench.samplers.analytic_ddpm.sample; the last step returns x0_hat. As the official
    reverse_ddim_ms_eps (core/inference/sampler/reverse_ddim.py L79-83), the clipped x0_hat is combined
    with the network's own eps_hat; ``eps_from_clipped_x0`` takes the eps implied by the clipped x0_hat
    instead (improved-diffusion's ddim_sample convention).
    """
    var = sampling_variances(
        denoiser.alpha_bars,
        grid,
        gamma,
        form="ddim",
        clip=clip,
        sigma2_clip_pixel=sigma2_clip_pixel,
        pixel_quantum=pixel_quantum,
    )
    a_s = denoiser.alpha_bars[grid][:-1]
    c_x0, c_eps, sigma = torch.sqrt(a_s).tolist(), torch.sqrt(1.0 - a_s).tolist(), torch.sqrt(var).tolist()
    return generalized_steps(
        denoiser, x_T, grid, gaussian_noise_at(noise), c_x0, c_eps, sigma, clip_x0,
        eps_from_clipped_x0=eps_from_clipped_x0,
    )


# Gamma_n comes as the required ``gamma`` input (the config's inputs: {gamma: moments}).
SPEC = SamplerSpec("analytic_ddim", sample, "discrete", lambda K, o: K, trajectory_variance="analytic")
