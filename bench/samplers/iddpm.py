"""iDDPM ancestral sampling with the learned variance on any respaced grid (Nichol & Dhariwal 2021).

DDIM updates on an iDDPM model (--use_ddim True) are bench.samplers.ddim.sample with the same
LearnedVarianceDenoiser: it reads only the eps and x0 of the prediction.
"""

from __future__ import annotations

import torch

from bench.iddpm import VariancePrediction, clip_variance_prediction, learned_log_variance, log_variance_bounds
from bench.noise import NoiseSource
from bench.schedules import posterior_coefficients


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    clip_x0: bool = True,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma z, log sigma^2 of iDDPM Eq. 15 on the respaced chain; the mean at the end."""
    abar = denoiser.alpha_bars[grid]
    if len(grid) > 1:
        log_beta, log_beta_tilde = log_variance_bounds(denoiser.schedule, grid)
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = denoiser(x, int(grid[k]))
        if not isinstance(pred, VariancePrediction):
            raise TypeError(
                f"the iddpm sampler needs a learned-variance denoiser (bench.iddpm.LearnedVarianceDenoiser), "
                f"got predictions of type {type(pred).__name__}"
            )
        if clip_x0:
            pred = clip_variance_prediction(pred, x, abar[k])
        if k == 0:
            x = pred.x0
            break
        c0, ct, _ = posterior_coefficients(abar[k - 1], abar[k])
        log_var = learned_log_variance(pred.v, log_beta[k], log_beta_tilde[k])
        x = c0 * pred.x0 + ct * x + torch.exp(0.5 * log_var) * noise.normal(k)
    return x
