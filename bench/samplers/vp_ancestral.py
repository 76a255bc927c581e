"""score-SDE's ancestral sampling of the VP SDE (Song et al. 2021; sampling.py AncestralSamplingPredictor):
the predictor of its discrete-time VP configs (vp/cifar10_ddpmpp.py, vp/ddpm/cifar10.py: corrector 'none').

``score_fn`` is a VP-time score whose ``sde`` has DDPM's discrete betas (bench.core.vp_schedule.VPSDE.discrete_beta;
the sub-VP SDE has none), ``grid`` K + 1 descending times (VPSDE.time_grid). Who draws x_T: the caller, from
N(0, I) (``score_fn.prior``).
"""

from __future__ import annotations

import math

import torch

from bench.core.noise import NoiseSource
from bench.samplers.spec import SamplerSpec
from bench.samplers.vp_sde import check_vp_time_grid


@torch.no_grad()
def sample(
    score_fn, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource, denoise: bool = True
) -> torch.Tensor:
    """Per step k: x <- (x + b_k score(x, t_k)) / sqrt(1 - b_k) + sqrt(b_k) z, b_k the discrete beta at t_k.

    b_k = linspace(beta_min / N, beta_max / N, N)[floor(t_k (N - 1))] with N = K, score-SDE's sde.N, the
    number of its steps (sampling.py L225-L233, L401-L407); its runs have K = N = 1000 with t = linspace(1,
    1e-3, N), which visits every entry once, from the last. ``denoise`` returns the last step's mean
    (score-SDE ``noise_removal``). Noise: step k draws ``noise.normal(k)``. One network call per step: NFE = K.
    """
    times = check_vp_time_grid(grid)
    steps = len(times) - 1
    x = x_T
    x_mean = x
    for k in range(steps):
        t = times[k]
        beta = score_fn.sde.discrete_beta(t, steps)
        x_mean = (x + beta * score_fn(x, t)) / math.sqrt(1.0 - beta)
        x = x_mean + math.sqrt(beta) * noise.normal(k)
    return x_mean if denoise else x


SPEC = SamplerSpec("vp_ancestral", sample, "vp_discrete", lambda K, o: K)
