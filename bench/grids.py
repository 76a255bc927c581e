"""Time grids: which K of the T timesteps a sampler visits (0-based indices, ascending).

The convention of each paper's code is kept exactly, since it changes the numbers
(DDIM uniform vs quadratic: ermongroup/ddim#3).
"""

from __future__ import annotations

import math

import torch

GRIDS = ("uniform", "quad", "even")


def time_grid(kind: str, T: int, K: int) -> torch.Tensor:
    """The realised grid of ``kind`` for K steps out of T, as ascending unique 0-based int64 indices."""
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= T:
        raise ValueError(f"number of steps K={K!r} must be an integer in [1, T={T}]")
    if kind == "uniform":
        grid = uniform_grid(T, K)
    elif kind == "quad":
        grid = quad_grid(T, K)
    elif kind == "even":
        grid = even_grid(T, K)
    else:
        raise ValueError(f"time grid {kind!r} is not one of {list(GRIDS)}")
    if torch.any(grid[1:] <= grid[:-1]):
        raise ValueError(f"time grid {kind!r} with T={T}, K={K} has repeated timesteps: {grid.tolist()}")
    return grid


def uniform_grid(T: int, K: int) -> torch.Tensor:
    """DDIM's 'uniform' skip (App. D.2, code `range(0, T, T // K)`): more than K steps when K does not divide T."""
    return torch.arange(0, T, T // K, dtype=torch.int64)


def quad_grid(T: int, K: int) -> torch.Tensor:
    """DDIM's 'quad' skip (App. D.2, code `int(linspace(0, sqrt(0.8 T), K)^2)`), used for CIFAR-10."""
    s = torch.linspace(0.0, math.sqrt(0.8 * T), K, dtype=torch.float64) ** 2
    return s.to(torch.int64)


def even_grid(T: int, K: int) -> torch.Tensor:
    """Both ends included, round(k (T-1)/(K-1)) (iDDPM respacing; Analytic-DPM App. F.4 'even trajectory')."""
    if K == 1:
        return torch.tensor([T - 1], dtype=torch.int64)
    return torch.tensor([round(k * (T - 1) / (K - 1)) for k in range(K)], dtype=torch.int64)
