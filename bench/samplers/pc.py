"""Predictor-corrector sampling of the VE SDE: reverse-diffusion predictor + Langevin corrector (score-SDE Alg. 2).

``score_fn`` is a bench.core.denoiser.ScoreFn and ``grid`` ascending indices into ``score_fn.sigmas``.
Who scales x_T: the caller. ``x_T`` is a draw from the VE prior N(0, sigma_max^2 I) (score-SDE
``prior_sampling``), sigma_max the largest visited level: the DAG passes
``score_fn.sigmas[grid[-1]] * noise.latent()``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import torch

from bench.core.denoiser import ScoreFn, check_level_grid
from bench.core.noise import NoiseSource
from bench.core.options import Positive, Range
from bench.samplers.spec import SamplerSpec

Corrector = Literal["langevin", "ald"]
CORRECTORS: tuple[str, ...] = get_args(Corrector)
# score-SDE's sampling batch on CIFAR-10, over which its LangevinCorrector averages the norms: run_lib.py
# L252 samples config.eval.batch_size at a time, 1024 in configs/default_cifar10_configs.py L33 (no VE
# CIFAR-10 config overrides it).
NORM_BLOCK = 1024


def norm_block(options: dict) -> int:
    """How many consecutive samples one corrector step couples through its norms (1: none) under ``options``."""
    coupled = options.get("corrector", "langevin") == "langevin" and options.get("n_steps_each", 1) != 0
    return options.get("norm_block", NORM_BLOCK) if coupled else 1


def _block_mean_norm(v: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of the per-sample norms of flattened v over rows [b block, (b + 1) block), broadcast back to v's rows."""
    norms = torch.linalg.vector_norm(v.flatten(1), dim=1)
    means = torch.cat([part.mean().expand(len(part)) for part in norms.split(block)])
    return means.view(-1, *([1] * (v.dim() - 1)))


@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    snr: Positive = 0.16,
    n_steps_each: Annotated[int, Range(ge=0)] = 1,
    corrector: Corrector = "langevin",
    denoise: bool = True,
    norm_block: Annotated[int, Range(ge=1)] = NORM_BLOCK,
) -> torch.Tensor:
    """Per level i, from high to low: correct, then x = x + (s_i^2 - s_{i-1}^2) s(x, s_i) + sqrt(s_i^2 - s_{i-1}^2) z.

    Predictor: the reverse diffusion (ancestral) step of the SMLD chain (score-SDE's
    ReverseDiffusionPredictor for the VE SDE, s_0 = 0 after the lowest level).
    Corrector, ``n_steps_each`` times x = x + e g + sqrt(2 e) z with g = s(x, s_i) (VE, alpha = 1)
    and the step e from ``corrector``:
    "langevin" (score-SDE's LangevinCorrector): e = 2 (snr ||z|| / ||g||)^2 where ||z|| and ||g|| are
    the means of the per-sample norms over a block of ``norm_block`` samples, rows [b B, (b + 1) B) of
    x (the last block may be shorter). score-SDE averages over its whole sampling batch; a block of
    fixed seeds keeps each sample independent of how a cell is cut into shards and batches
    (bench.steps.sample.generate feeds whole blocks). ``norm_block`` = 1 is the per-sample step, whose
    dependence on x biases the chain's stationary law (it does not converge as K grows at low d);
    "ald" (score-SDE's AnnealedLangevinDynamics corrector): e = 2 (snr s_i)^2, state-independent.
    ``denoise`` returns the last predictor's mean, i.e. no noise is added after the lowest level
    (score-SDE ``noise_removal``). Noise: level position k draws ``noise.normal(k)`` for the
    predictor and ``noise.normal(k, extra=j + 1)`` for corrector step j.
    """
    if not isinstance(n_steps_each, int) or n_steps_each < 0:
        raise ValueError(f"n_steps_each={n_steps_each!r} must be a non-negative integer")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector {corrector!r} is not one of {list(CORRECTORS)}")
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"corrector signal-to-noise ratio snr={snr!r} must be positive")
    if isinstance(norm_block, bool) or not isinstance(norm_block, int) or norm_block < 1:
        raise ValueError(f"norm_block={norm_block!r} must be a positive integer")
    grid = check_level_grid(grid, len(score_fn.sigmas))
    sigmas = score_fn.sigmas[grid].tolist()
    x = x_T
    x_mean = x
    # Levels and state-independent step sizes are Python floats: each update is one or two elementwise ops.
    for k in range(len(grid) - 1, -1, -1):
        sigma = sigmas[k]
        for j in range(n_steps_each):
            g = score_fn(x, sigma)
            z = noise.normal(k, extra=j + 1)
            if corrector == "ald":
                step = 2.0 * (snr * sigma) ** 2
                x = torch.add(x, g, alpha=step).add_(z, alpha=math.sqrt(2.0 * step))
            else:
                # score-SDE sampling.py L276-L278: mean norms over the batch, alpha = 1 for the VE SDE (L271).
                step = 2.0 * (snr * _block_mean_norm(z, norm_block) / _block_mean_norm(g, norm_block)) ** 2
                x = torch.addcmul(x, step, g).addcmul_(torch.sqrt(2.0 * step), z)
        var = sigma**2 - (sigmas[k - 1] ** 2 if k > 0 else 0.0)
        x_mean = torch.add(x, score_fn(x, sigma), alpha=var)
        x = torch.add(x_mean, noise.normal(k), alpha=math.sqrt(var))
    return x_mean if denoise else x


# K predictor steps, each after n_steps_each corrector steps (score-SDE Alg. 2).
SPEC = SamplerSpec("pc", sample, "levels", lambda K, o: K * (1 + o.get("n_steps_each", 1)), coupled_block=norm_block)
