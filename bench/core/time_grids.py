"""Time grids: which K of the T timesteps a sampler visits (0-based indices, ascending).

The convention of each paper's code is kept exactly, since it changes the numbers
(DDIM uniform vs quadratic: ermongroup/ddim#3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from bench.core.options import option_parameters

if TYPE_CHECKING:
    from bench.methods.analytic import BoundTerms

GRIDS = ("uniform", "quad", "even", "respace", "optimal")
# Grids chosen from a model's Analytic-DPM moments (Gamma_n): realised only once the moments exist.
MOMENT_GRIDS = ("optimal",)
# The variances with an optimal trajectory: the analytic one's from Gamma_n (Sec. 4), the fixed ones' from
# their bound's terms (bench.methods.analytic_trajectory.bound_trajectory).
TRAJECTORY_VARIANCES = ("analytic", "beta", "beta_tilde")
# Grids kept exactly as their paper's code builds them, repeated timesteps included: DDIM's quad skip
# int(linspace(0, sqrt(0.8 T), K)^2) repeats steps from K = 50 at T = 1000 (runners/diffusion.py), and
# DDIM's loop (functions/denoising.py generalized_steps) runs each repeated pair as a zero-length step:
# one network call, x unchanged; only samplers whose spec says so (SamplerSpec.zero_length_steps) run
# such a grid, and the variational bound has no term for such a step. Every other grid refuses repeats.
REPEATING_GRIDS = ("quad",)


def time_grid(
    kind: str,
    T: int,
    K: int,
    *,
    alpha_bars: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    variance: str = "analytic",
    **options,
) -> torch.Tensor:
    """The realised grid of ``kind`` for K steps out of T, as ascending 0-based int64 indices.

    Indices are unique except on the grids in REPEATING_GRIDS, which keep their code's repeats
    (non-decreasing, exactly K entries).

    ``options`` are the sampler's ``grid_options`` (``respace``: ``section_counts``); ``alpha_bars`` and
    ``gamma`` (the model's schedule and moments) are needed by the grids in MOMENT_GRIDS only. The optimal
    trajectory is that of ``variance`` (TRAJECTORY_VARIANCES): the analytic variance's from
    gamma, or the beta / beta-tilde bound's from ``bound_terms`` (bench.methods.analytic.BoundTerms).
    """
    check_time_grid(kind, T, K, **options)
    if kind == "uniform":
        grid = uniform_grid(T, K)
    elif kind == "quad":
        grid = quad_grid(T, K)
    elif kind == "even":
        grid = even_grid(T, K)
    elif kind == "respace":
        grid = respaced_grid(T, K, options.get("section_counts"))
    elif variance not in TRAJECTORY_VARIANCES:
        raise ValueError(f"optimal trajectory variance {variance!r} is not one of {list(TRAJECTORY_VARIANCES)}")
    elif variance == "analytic":
        if alpha_bars is None or gamma is None:
            raise ValueError(f"time grid {kind!r} is chosen from the model's Gamma_n: it needs alpha_bars and gamma")
        from bench.methods.analytic_trajectory import optimal_trajectory

        grid = optimal_trajectory(alpha_bars, gamma, K)
    else:
        if alpha_bars is None or bound_terms is None:
            raise ValueError(
                f"time grid {kind!r} of variance {variance!r} is chosen from the beta bound's terms of the model's "
                "moments: it needs alpha_bars and bound_terms (moments saved without them: rerun the moments job)"
            )
        from bench.methods.analytic_trajectory import bound_trajectory

        grid = bound_trajectory(alpha_bars, bound_terms, K, variance)
    if torch.any(grid[1:] < grid[:-1]):
        raise ValueError(f"time grid {kind!r} with T={T}, K={K} is not ascending: {grid.tolist()}")
    if kind not in REPEATING_GRIDS and has_repeats(grid):
        raise ValueError(f"time grid {kind!r} with T={T}, K={K} has repeated timesteps: {grid.tolist()}")
    return grid


def model_free_grid(kind: str, T: int, K: int, **options) -> torch.Tensor | None:
    """The grid of ``kind`` where no model chooses it: any grid outside MOMENT_GRIDS, and a moment grid at K = T.

    A strictly ascending choice of T of the T timesteps is all of them, so there the optimal trajectory
    is the full chain; at K < T it is known only once the model's moments are. None then.
    """
    if kind not in MOMENT_GRIDS:
        return time_grid(kind, T, K, **options)
    check_time_grid(kind, T, K, **options)
    return torch.arange(T, dtype=torch.int64) if K == T else None


def has_repeats(grid: torch.Tensor) -> bool:
    """Whether an ascending grid visits some timestep twice (a zero-length step of DDIM's loop)."""
    return bool(torch.any(grid[1:] == grid[:-1]))


def check_time_grid(kind: str, T: int, K: int, **options) -> None:
    """Refuse a grid, K or grid options that no model could realise, before any job runs.

    Grids in MOMENT_GRIDS are checked up to what needs the moments (K and options); the others are built.
    """
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= T:
        raise ValueError(f"number of steps K={K!r} must be an integer in [1, T={T}]")
    if kind not in GRIDS:
        raise ValueError(f"time grid {kind!r} is not one of {list(GRIDS)}")
    allowed = list(grid_options(kind))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"time grid {kind!r} takes grid_options {list(allowed)}, not {unknown}")
    if kind == "optimal" and K < 2:
        raise ValueError(f"time grid 'optimal' needs K >= 2 (a trajectory from step 0 to step T-1), got K={K}")
    if kind == "respace":
        respaced_grid(T, K, options.get("section_counts"))


def uniform_grid(T: int, K: int) -> torch.Tensor:
    """DDIM's 'uniform' skip (App. D.2, code `range(0, T, T // K)`): more than K steps when K does not divide T."""
    return torch.arange(0, T, T // K, dtype=torch.int64)


def quad_grid(T: int, K: int) -> torch.Tensor:
    """DDIM's 'quad' skip (App. D.2, code `int(linspace(0, sqrt(0.8 T), K)^2)`), used for CIFAR-10.

    Kept with its repeats (T = 1000: 49 distinct steps at K = 50, 96 at 100, 688 at 1000): K entries.
    """
    # numpy's linspace, value by value: i * (stop / (K - 1)), the last one exactly stop. torch.linspace
    # rounds differently in the last bit, which int() of the square turns into a different step (K = 16, ...).
    stop = math.sqrt(T * 0.8)
    if K == 1:
        return torch.zeros(1, dtype=torch.int64)
    step = stop / (K - 1)
    points = [i * step for i in range(K - 1)] + [stop]
    return torch.tensor([int(x * x) for x in points], dtype=torch.int64)


def even_grid(T: int, K: int) -> torch.Tensor:
    """Both ends included, round(k (T-1)/(K-1)) (Analytic-DPM App. F.4 'even trajectory', 0-based).

    iDDPM's one-section respacing accumulates the stride instead and differs where the sum lands off a
    tie (T = 1000: K = 21, 23, 27, ...; not at K = 10, 25, 50, 100, 1000): see respaced_grid.
    """
    if K == 1:
        return torch.tensor([T - 1], dtype=torch.int64)
    return torch.tensor([round(k * (T - 1) / (K - 1)) for k in range(K)], dtype=torch.int64)


def respaced_grid(T: int, K: int, section_counts: str | Sequence[int] | None = None) -> torch.Tensor:
    """iDDPM's respacing (respace.py ``space_timesteps``): ``section_counts`` "a,b,c" or "ddimN"; None = "K".

    Sections: [0, T) cut into len(counts) parts, the first T % len(counts) one step longer; a part of
    size S with c steps takes start + round(x), x accumulated from 0 by (S - 1)/(c - 1) in floats (stride
    1 for c <= 1). "ddimN": range(0, T, i) for the smallest integer i giving exactly N steps, an error if none.
    The total number of steps must equal the cell's K.
    """
    counts = str(K) if section_counts is None else section_counts
    if isinstance(counts, str) and counts.startswith("ddim"):
        N = _count(counts[len("ddim") :], counts)
        stride = next((i for i in range(1, T) if len(range(0, T, i)) == N), None)
        if stride is None:
            raise ValueError(f"section_counts {counts!r}: no integer stride takes exactly {N} of T={T} steps")
        steps = list(range(0, T, stride))
    else:
        parts = counts.split(",") if isinstance(counts, str) else list(counts)
        steps = _sectioned(T, [_count(p, counts) for p in parts])
    if len(steps) != K:
        raise ValueError(f"section_counts {counts!r} take {len(steps)} steps, but the cell has K={K}")
    return torch.tensor(steps, dtype=torch.int64)


def _count(text, counts) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        n = -1
    if n < 0 or isinstance(text, bool | float):
        raise ValueError(
            f"section_counts {counts!r}: {text!r} is not a step count; give comma-separated non-negative "
            f"integers (e.g. '10,15,20') or 'ddimN'"
        )
    return n


def _sectioned(T: int, counts: list[int]) -> list[int]:
    size_per, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"section {i} of T={T} has {size} steps, fewer than the {count} asked for")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        x = 0.0
        for _ in range(count):
            steps.append(start + round(x))
            x += stride
        start += size
    return steps


# The function whose keywords past (T, K) are a time grid's grid_options; the other grids take none.
GRID_OPTION_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"respace": respaced_grid}


def grid_options(kind: str) -> dict[str, object]:
    """Name -> annotation of each grid_option of time grid ``kind`` (bench.core.options.option_parameters)."""
    fn = GRID_OPTION_FUNCTIONS.get(kind)
    return {} if fn is None else option_parameters(fn, exclude=("T", "K"))
