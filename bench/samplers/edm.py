"""EDM samplers in sigma space (Karras et al. 2022, Alg. 1 and 2): Euler, Heun and the stochastic sampler.

They integrate the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 3 with
sigma(t) = t, s(t) = 1) over ``grid``, a descending sigma grid ending at 0 (bench.core.sigma_grids.sigma_grid),
with ``denoiser`` a bench.core.denoiser.SigmaDenoiser.

Who scales x_T: the caller. As EDM's generate.py multiplies the latents by t_0 before its loop,
x_T here is already at noise level grid[0]; the DAG passes ``noise.latent() * grid[0]``.
"""

from __future__ import annotations

import math

import torch

from bench.core.noise import NoiseSource
from bench.core.options import NonNegative
from bench.samplers.spec import SamplerSpec


def euler(denoiser, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource) -> torch.Tensor:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i (EDM Alg. 1 without line 9): N NFE."""
    sigmas = _check_grid(grid).tolist()
    x = x_T
    for t_cur, t_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        # The step's scalars in one Python float: two elementwise ops per step.
        x = torch.add(x, torch.sub(x, denoiser(x, t_cur)), alpha=(t_next - t_cur) / t_cur)
    return x


def heun(denoiser, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource) -> torch.Tensor:
    """Heun's 2nd-order method, Euler on the last step to sigma = 0 (EDM Alg. 1): 2N - 1 NFE."""
    return stochastic(denoiser, x_T, grid, noise=noise)


def stochastic(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    S_churn: NonNegative = 0.0,
    S_tmin: NonNegative = 0.0,
    S_tmax: NonNegative = math.inf,
    S_noise: NonNegative = 1.0,
) -> torch.Tensor:
    """Churn to t_hat = t_i (1 + gamma_i), then a Heun step to t_{i+1} (EDM Alg. 2): 2N - 1 NFE.

    gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= t_i <= S_tmax, else 0; t_hat is
    rounded by ``denoiser.round_sigma`` and the added noise has std S_noise sqrt(t_hat^2 - t_i^2).
    Step i draws ``noise.normal(i)``, and only when gamma_i > 0.
    """
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"S_churn={S_churn!r} and S_noise={S_noise!r} must be non-negative")
    if not 0 <= S_tmin <= S_tmax:
        raise ValueError(f"churn range S_tmin={S_tmin!r}, S_tmax={S_tmax!r} must satisfy 0 <= S_tmin <= S_tmax")
    sigmas = _check_grid(grid).tolist()
    N = len(sigmas) - 1
    gamma = min(S_churn / N, math.sqrt(2) - 1)
    x = x_T
    # Sigmas and step sizes are Python floats (float64), so each update is one elementwise op.
    for i in range(N):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        t_hat = t_cur
        if gamma > 0 and S_tmin <= t_cur <= S_tmax:
            t_hat = float(denoiser.round_sigma(torch.tensor(t_cur * (1 + gamma), dtype=torch.float64)))
            # max: rounding may land t_hat a hair below t_cur on a discrete grid
            x = torch.add(x, noise.normal(i), alpha=math.sqrt(max(t_hat**2 - t_cur**2, 0.0)) * S_noise)
        h = t_next - t_hat
        d_cur = torch.sub(x, denoiser(x, t_hat)).div_(t_hat)
        x_next = torch.add(x, d_cur, alpha=h)
        if i < N - 1:
            d_next = torch.sub(x_next, denoiser(x_next, t_next)).div_(t_next)
            x_next = torch.add(x, d_cur.add_(d_next), alpha=0.5 * h)
        x = x_next
    return x


def _check_grid(grid: torch.Tensor) -> torch.Tensor:
    """The grid as float64, after checking it descends from positive sigmas to exactly 0.

    Repeated sigmas are allowed: rounding an EDM grid to a discrete model's sigmas (round_sigma)
    can snap neighbours to one level, and EDM's sampler then takes a zero-length step, as here.
    """
    sigmas = torch.as_tensor(grid, dtype=torch.float64)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigma grid must be 1-D with at least 2 entries, got shape {list(sigmas.shape)}")
    if sigmas[-1] != 0 or torch.any(sigmas[:-1] <= 0) or torch.any(sigmas[1:] > sigmas[:-1]):
        raise ValueError(f"sigma grid must descend from positive sigmas to 0, got {sigmas.tolist()}")
    return sigmas


# EDM Alg. 1 and 2 with K = N sigma steps: Heun's correction on all but the last step.
SPECS = (
    SamplerSpec("edm_euler", euler, "sigma", lambda K, o: K),
    SamplerSpec("edm_heun", heun, "sigma", lambda K, o: 2 * K - 1),
    SamplerSpec("edm_stochastic", stochastic, "sigma", lambda K, o: 2 * K - 1),
)
