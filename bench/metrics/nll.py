"""Negative log-likelihood upper bound (the VLB) of a discrete chain under a K-step trajectory, in bits/dim."""

from __future__ import annotations

import math

import torch

from bench.core.denoiser import DiscreteEpsDenoiser, clip_prediction
from bench.core.noise import normal
from bench.core.schedules import posterior_coefficients

VARIANCES = ("beta", "beta_tilde")
# The variance of the discretised decoder p(x_0 | x_{tau_1}): beta-tilde between the trajectory's first
# two steps (iDDPM's respaced chain), or Analytic-DPM's: the full chain's beta-tilde_{1|2} for a trajectory
# from the first step (core/inference/ll/elbo.py L54 and L209, _sigma2_small(1, 2, ...)), else the beta of
# the skip from x_0, 1 - abar_{tau_1} (elbo.py L113, the decoder terms of the beta bound's DP).
DECODER_VARIANCES = ("trajectory", "chain")


def gaussian_kl(mean_q, var_q, mean_p, var_p) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) elementwise, nats."""
    return 0.5 * (torch.log(var_p / var_q) + var_q / var_p + (mean_q - mean_p) ** 2 / var_p - 1.0)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, half_width: float
) -> torch.Tensor:
    """log P(bin of x) under N(mean, std^2), bins 2 half_width wide, outer bins open (DDPM Eq. 13)."""
    upper = torch.special.ndtr((x + half_width - mean) / std)
    lower = torch.special.ndtr((x - half_width - mean) / std)
    lo_edge = x - half_width < -1.0 + 1e-6
    hi_edge = x + half_width > 1.0 - 1e-6
    prob = torch.where(lo_edge, upper, torch.where(hi_edge, 1.0 - lower, upper - lower))
    return torch.log(prob.clamp(min=1e-12))


def decoder_variance(alpha_bars: torch.Tensor, grid: torch.Tensor, decoder: str) -> torch.Tensor:
    """The decoder's variance ``decoder``: beta-tilde_{tau_1|tau_2} ("trajectory"), or ("chain") beta-tilde_{1|2}
    where tau_1 is the first step and 1 - abar_{tau_1} elsewhere."""
    if decoder not in DECODER_VARIANCES:
        raise ValueError(f"decoder variance {decoder!r} is not one of {list(DECODER_VARIANCES)}")
    if decoder == "chain":
        if int(grid[0]) == 0:
            return posterior_coefficients(alpha_bars[0], alpha_bars[1])[2]
        return 1.0 - alpha_bars[grid[0]]
    if len(grid) > 1:
        return posterior_coefficients(alpha_bars[grid[0]], alpha_bars[grid[1]])[2]
    return 1.0 - alpha_bars[grid[0]]


def vlb_bits_per_dim(
    denoiser: DiscreteEpsDenoiser,
    x0: torch.Tensor,
    grid: torch.Tensor,
    seeds: torch.Tensor,
    *,
    max_level: int,
    clip_x0: bool = True,
    variances: tuple[str, ...] = VARIANCES,
    decoder: str = "trajectory",
) -> dict[str, torch.Tensor]:
    """Per-image L = L_prior + sum_k L_{k-1} + L_0 in bits/dim for each reverse variance (DDPM Eq. 5).

    The chain is the sub-chain over ``grid`` (ascending 0-based steps). Each term draws one x_{tau_k}
    ~ q(x_{tau_k} | x_0) from the image's own seed, and both variances share those draws and the
    network evaluations. The decoder p(x_0 | x_{tau_1}) is a discretised Gaussian over the
    max_level + 1 intensity levels, with mean x0_hat and the variance ``decoder`` names (decoder_variance),
    for both variance choices.
    """
    for v in variances:
        if v not in VARIANCES:
            raise ValueError(f"NLL variance {v!r} is not one of {list(VARIANCES)}")
    if decoder not in DECODER_VARIANCES:
        raise ValueError(f"decoder variance {decoder!r} is not one of {list(DECODER_VARIANCES)}")
    if bool(torch.any(grid[1:] <= grid[:-1])):
        raise ValueError(f"the variational bound needs strictly ascending timesteps; grid {grid.tolist()} repeats some")
    x0 = x0.to(torch.float64)
    B = x0.shape[0]
    dims = x0[0].numel()
    shape = tuple(x0.shape[1:])
    abar = denoiser.alpha_bars[grid]
    K = len(grid)
    a_T = abar[-1]
    prior = gaussian_kl(torch.sqrt(a_T) * x0, 1.0 - a_T, torch.zeros(()), torch.ones(())).reshape(B, -1).sum(1)
    total = {v: prior.clone() for v in variances}
    for k in range(K - 1, -1, -1):
        eps = normal(seeds, k + 1, shape)
        x_t = torch.sqrt(abar[k]) * x0 + torch.sqrt(1.0 - abar[k]) * eps
        pred = denoiser(x_t, int(grid[k]))
        if clip_x0:
            pred = clip_prediction(pred, x_t, abar[k])
        if k == 0:
            dec_var = decoder_variance(denoiser.alpha_bars, grid, decoder)
            ll = discretized_gaussian_log_likelihood(x0, pred.x0, torch.sqrt(dec_var), 1.0 / max_level)
            for v in variances:
                total[v] = total[v] - ll.reshape(B, -1).sum(1)
            break
        c0, ct, var_q = posterior_coefficients(abar[k - 1], abar[k])
        mean_q = c0 * x0 + ct * x_t
        mean_p = c0 * pred.x0 + ct * x_t
        for v in variances:
            var_p = var_q if v == "beta_tilde" else 1.0 - abar[k] / abar[k - 1]
            total[v] = total[v] + gaussian_kl(mean_q, var_q, mean_p, var_p).reshape(B, -1).sum(1)
    return {v: t / (dims * math.log(2.0)) for v, t in total.items()}


def standard_error(bpd: torch.Tensor) -> float | None:
    """Standard error of the mean bits/dim over images, std / sqrt(n); None for one image, where it is undefined
    (torch's std would be NaN, which JSON cannot hold)."""
    n = len(bpd)
    return float(bpd.std() / n**0.5) if n > 1 else None
