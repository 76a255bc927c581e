"""Euler-Maruyama on score-SDE's reverse-time VP SDE (Song et al. 2021, Eq. 6 with the VP SDE of Eq. 11).

``score_fn`` is a bench.vpsde.VPTimeScore (``score_fn(x, t)`` and ``score_fn.sde.beta(t)``),
``grid`` K + 1 descending times t_0 = 1 > ... > t_K (bench.vpsde.VPSDE.time_grid). Who draws x_T:
the caller, from the VP prior N(0, I) (``score_fn.prior``).
"""

from __future__ import annotations

import torch

from bench.noise import NoiseSource


def _check_time_grid(grid: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 2 or not torch.all(torch.isfinite(g)) or torch.any(g[1:] >= g[:-1]):
        raise ValueError(f"VP SDE time grid must be 1-D, finite, strictly descending, >= 2 times; got {g.tolist()}")
    return g


@torch.no_grad()
def euler_maruyama(
    score_fn, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource, denoise: bool = True
) -> torch.Tensor:
    """Per step k, h = t_k - t_{k+1}: x <- x + h beta(t_k) (x / 2 + score(x, t_k)) + sqrt(h beta(t_k)) z.

    The reverse SDE's drift is f - g^2 score = -beta x / 2 - beta score, integrated backwards by
    -h (score-SDE's EulerMaruyamaPredictor, no corrector: configs/vp/cifar10_ddpmpp_continuous.py).
    ``denoise`` returns the last step's mean, without its noise (score-SDE ``noise_removal``).
    Noise: step k draws ``noise.normal(k)``. One network call per step: NFE = K.
    """
    times = _check_time_grid(grid)
    x = x_T.to(torch.float64)
    x_mean = x
    for k in range(len(times) - 1):
        t = times[k]
        h = t - times[k + 1]
        bh = score_fn.sde.beta(t) * h
        x_mean = x + bh * (0.5 * x + score_fn(x, t))
        x = x_mean + torch.sqrt(bh) * noise.normal(k)
    return x_mean if denoise else x
