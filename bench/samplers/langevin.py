"""Annealed Langevin dynamics over the VE noise levels (Song & Ermon 2019, Alg. 1; NCSNv2 denoising).

``score_fn`` is a bench.core.denoiser.ScoreFn and ``grid`` ascending indices into ``score_fn.sigmas``
(the visited levels; sigma_L below is the smallest visited one). Who scales x_T: the caller.
``x_T`` is a draw from the VE prior N(0, sigma_max^2 I) of score-SDE, sigma_max the largest
visited level: the DAG passes ``score_fn.sigmas[grid[-1]] * noise.latent()`` (NCSN and NCSNv2
start from uniform noise instead).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from bench.core.denoiser import ScoreFn, check_level_grid
from bench.core.noise import NoiseSource
from bench.core.options import Positive, Range
from bench.samplers.spec import SamplerSpec


@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    n_steps_each: Annotated[int, Range(ge=1)] = 100,
    eps: Positive = 2e-5,
    denoise: bool = False,
) -> torch.Tensor:
    """x <- x + alpha_i/2 s(x, sigma_i) + sqrt(alpha_i) z, alpha_i = eps sigma_i^2 / sigma_L^2 (NCSN Alg. 1).

    NCSN's and NCSNv2's code write the same update with step_size = step_lr * (sigma_i / sigma_L)^2, step_lr = eps / 2
    (NCSN runners/anneal_runner.py L210-215, NCSNv2 models/__init__.py L28-35), on their own data scale.
    ``denoise`` adds the final x + sigma_L^2 s(x, sigma_L) (Tweedie's E[x0 | x]; NCSNv2's ``denoise``).
    Noise: level position k of the grid, Langevin step j draws ``noise.normal(k * n_steps_each + j)``.
    """
    if not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each={n_steps_each!r} must be a positive integer")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"Langevin step-size constant eps={eps!r} must be positive")
    grid = check_level_grid(grid, len(score_fn.sigmas))
    sigmas = score_fn.sigmas[grid].tolist()
    sigma_L = sigmas[0]
    x = x_T
    for k in range(len(grid) - 1, -1, -1):
        alpha = eps * (sigmas[k] / sigma_L) ** 2
        for j in range(n_steps_each):
            z = noise.normal(k * n_steps_each + j)
            x = torch.add(x, score_fn(x, sigmas[k]), alpha=0.5 * alpha).add_(z, alpha=math.sqrt(alpha))
    if denoise:
        x = torch.add(x, score_fn(x, sigma_L), alpha=sigma_L**2)
    return x


# K noise levels: n_steps_each Langevin steps each, plus Tweedie's final denoising step (NCSN Alg. 1).
SPEC = SamplerSpec(
    "langevin", sample, "levels", lambda K, o: K * o.get("n_steps_each", 100) + int(o.get("denoise", False))
)
