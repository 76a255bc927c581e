"""iDDPM ancestral sampling with the learned variance on any respaced grid (Nichol & Dhariwal 2021).

DDIM updates on an iDDPM model (--use_ddim True) are bench.samplers.ddim.sample with the same
LearnedVarianceDenoiser: it reads only the eps and x0 of the prediction.
"""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.methods.iddpm import VariancePrediction, log_variance_bounds
from bench.samplers.ddpm import mean_coefficients
from bench.samplers.spec import SamplerSpec


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
        # sigma = exp(log sigma^2 / 2), iDDPM Eq. 15 with frac = (v + 1) / 2, is exp(a + b v): three ops per step.
        b = (0.25 * (log_beta - log_beta_tilde)).tolist()
        a = (0.5 * log_beta_tilde + 0.25 * (log_beta - log_beta_tilde)).tolist()
    c0, ct = mean_coefficients(denoiser.alpha_bars[grid])
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        pred = denoiser(x, int(grid[k]))
        if not isinstance(pred, VariancePrediction):
            raise TypeError(
                f"the iddpm sampler needs a learned-variance denoiser (bench.methods.iddpm.LearnedVarianceDenoiser), "
                f"got predictions of type {type(pred).__name__}"
            )
        # The mean needs x0 only: clipping it is all that clip_variance_prediction would change here.
        x0 = pred.x0.clamp(-1.0, 1.0) if clip_x0 else pred.x0
        if k == 0:
            return x0
        sigma = torch.mul(pred.v, b[k]).add_(a[k]).exp_()
        # c0 x0 + ct x + sigma z, summed left to right as written, in one fresh buffer.
        x = torch.mul(x0, c0[k - 1]).add_(x, alpha=ct[k - 1]).addcmul_(sigma, noise.normal(k))
    return x


SPEC = SamplerSpec("iddpm", sample, "learned_variance", lambda K, o: K)
