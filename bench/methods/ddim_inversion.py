"""DDIM encoding: the deterministic DDIM update run upward, data to x_T (Song et al. 2021, Sec. 5.4, Table 2).

ermongroup/ddim has no reconstruction script; the paper's Sec. 5.4 encodes x_0 "from x_0 to x_T (reverse of
Eq. (14))" and decodes "from the resulting x_T (forward of Eq. (14))", S steps each way. Written in x-bar =
x / sqrt(a) and sigma-bar = sqrt((1 - a) / a), Eq. 13 (the eta = 0 update) is the Euler step of that ODE:
x-bar(t') = x-bar(t) + (sigma-bar(t') - sigma-bar(t)) eps(x_t, t). The encoder takes that step with t' > t,
eps at the step's start, so it is not the exact inverse of the decoder's step (whose eps is at the upper
end): its error is the two Euler discretisations', and shrinks as S grows, as Table 2 shows.
"""

from __future__ import annotations

import torch


def encode(denoiser, x0: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """x_t' = sqrt(a_t') x0_hat(x_t) + sqrt(1 - a_t') eps(x_t, t), t = grid[i] -> t' = grid[i + 1] (DDIM Eq. 13 upward).

    The first move leaves the data (a = 1, where x0_hat is x0 itself) for grid[0], with eps evaluated on
    x0 at grid[0], the network's nearest time. A repeated timestep (DDIM's quad grid) is a zero-length
    move: the network is called and counted, x stays, as the decoder's loop does (bench.samplers.ddim),
    so each pass costs K network calls.
    """
    steps = grid.tolist()
    abar = denoiser.alpha_bars[grid]
    x = x0
    for i, t in enumerate(steps):
        if i == 0:
            x0_hat, eps = x0, denoiser(x0, t).eps
        else:
            pred = denoiser(x, steps[i - 1])
            if t == steps[i - 1]:
                continue
            x0_hat, eps = pred.x0, pred.eps
        x = torch.mul(x0_hat, torch.sqrt(abar[i]).item()).add_(eps, alpha=torch.sqrt(1 - abar[i]).item())
    return x
