"""iDDPM ancestral sampling with the learned variance on any respaced grid (Nichol & Dhariwal 2021).

DDIM updates on an iDDPM model (--use_ddim True) are bench.samplers.ddim.sample with the same
LearnedVarianceDenoiser: it reads only the eps and x0 of the prediction.
"""

from __future__ import annotations

import torch

from bench.iddpm import VariancePrediction, learned_log_variance, log_variance_bounds
from bench.noise import NoiseSource
from bench.samplers.ddpm import mean_coefficients


def sample(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    clip_x0: bool = True,
) -> torch.Tensor:
    """x_s = mu(x_t, x0_hat) + sigma z, log sigma^2 of iDDPM Eq. 15 on the respaced chain; the mean at the end."""
    if len(grid) > 1:
        log_beta, log_beta_tilde = log_variance_bounds(denoiser.schedule, grid)
    c0, ct = mean_coefficients(denoiser.alpha_bars[grid])
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = denoiser(x, int(grid[k]))
        if not isinstance(pred, VariancePrediction):
            raise TypeError(
                f"the iddpm sampler needs a learned-variance denoiser (bench.iddpm.LearnedVarianceDenoiser), "
                f"got predictions of type {type(pred).__name__}"
            )
        # The mean needs x0 only: clipping it is all that clip_variance_prediction would change here.
        x0 = pred.x0.clamp(-1.0, 1.0) if clip_x0 else pred.x0
        if k == 0:
            return x0
        sigma = learned_log_variance(pred.v, log_beta[k], log_beta_tilde[k]).mul_(0.5).exp_()
        # c0 x0 + ct x + sigma z, summed left to right as written; x_t and sigma are overwritten (never x_T).
        ct_x = torch.mul(x, ct[k - 1]) if x is x_T else x.mul_(ct[k - 1])
        x = torch.mul(x0, c0[k - 1]).add_(ct_x).add_(sigma.mul_(noise.normal(k)))
    return x
