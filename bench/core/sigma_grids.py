"""EDM's sigma grids (Karras et al. 2022, Table 1 and generate.py ``--disc``): descending, sigma_N = 0 appended.

Each takes the network's SigmaDenoiser (bench.core.denoiser) where one is given: the range is clamped
to the network's and the levels rounded as it rounds them, as generate.py does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bench.core.denoiser import SigmaDenoiser
from bench.core.options import Positive


def edm_sigma_grid(
    N: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: Positive = 7.0,
    *,
    denoiser: SigmaDenoiser | None = None,
) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, sigma_N = 0 (EDM Eq. 5)."""
    _check_steps(N)
    if not rho > 0:
        raise ValueError(f"EDM grid exponent rho={rho!r} must be positive")
    sigma_min, sigma_max = _supported_range(sigma_min, sigma_max, denoiser)
    frac = torch.arange(N, dtype=torch.float64) / max(N - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish_grid((hi + frac * (lo - hi)) ** rho, denoiser)


def vp_sigma(beta_d: float, beta_min: float, t: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP)."""
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + beta_min * t))


# NVlabs/edm generate.py L87-92: the noise range each discretisation defaults to, the VP one being
# [sigma(epsilon_s), sigma(1)] of the VP baseline's beta_d = 19.9, beta_min = 0.1 (EDM Table 1).
VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
DEFAULT_SIGMA_RANGES = {"ve": (0.02, 100.0), "iddpm": (0.002, 81.0), "edm": (0.002, 80.0)}


def default_sigma_range(kind: str, *, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """[sigma_min, sigma_max] that discretisation ``kind`` uses when none is given (generate.py L87-92)."""
    if kind == "vp":
        ends = vp_sigma(VP_BETA_D, VP_BETA_MIN, torch.tensor([epsilon_s, 1.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])
    if kind not in DEFAULT_SIGMA_RANGES:
        raise ValueError(f"sigma grid {kind!r} is not one of {list(SIGMA_GRID_FUNCTIONS)}")
    return DEFAULT_SIGMA_RANGES[kind]


def sigma_range(
    kind: str,
    *,
    denoiser: SigmaDenoiser | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    epsilon_s: float = 1e-3,
    **grid_options,
) -> tuple[float, float]:
    """The [sigma_min, sigma_max] of grid ``kind`` with ``grid_options``, clamped to the network's (generate.py L87-96).

    The other grid options (rho, C_1, ...) shape the grid inside this range and are ignored here.
    """
    default_min, default_max = default_sigma_range(kind, epsilon_s=epsilon_s)
    return _supported_range(
        default_min if sigma_min is None else sigma_min, default_max if sigma_max is None else sigma_max, denoiser
    )


def vp_betas(sigma_min: float, sigma_max: float, epsilon_s: float) -> tuple[float, float]:
    """(beta_d, beta_min) with sigma_VP(epsilon_s) = sigma_min and sigma_VP(1) = sigma_max (generate.py L99-100)."""
    log_lo, log_hi = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
    beta_d = 2 * (log_lo / epsilon_s - log_hi) / (epsilon_s - 1)
    return beta_d, log_hi - 0.5 * beta_d


def vp_sigma_grid(
    N: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    *,
    epsilon_s: float = 1e-3,
    denoiser: SigmaDenoiser | None = None,
) -> torch.Tensor:
    """sigma_i = sigma_VP(t_i), t_i = 1 + i/(N-1) (epsilon_s - 1) (EDM Table 1, VP time steps).

    beta_d and beta_min are solved so that sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max
    (vp_betas); the default range is that of beta_d = 19.9, beta_min = 0.1 (default_sigma_range).
    """
    _check_steps(N)
    _check_epsilon_s(epsilon_s)
    default_min, default_max = default_sigma_range("vp", epsilon_s=epsilon_s)
    sigma_min = default_min if sigma_min is None else sigma_min
    sigma_max = default_max if sigma_max is None else sigma_max
    sigma_min, sigma_max = _supported_range(sigma_min, sigma_max, denoiser)
    beta_d, beta_min = vp_betas(sigma_min, sigma_max, epsilon_s)
    t = 1 + torch.arange(N, dtype=torch.float64) / max(N - 1, 1) * (epsilon_s - 1)
    return _finish_grid(vp_sigma(beta_d, beta_min, t), denoiser)


def ve_sigma_grid(
    N: int, sigma_min: float = 0.02, sigma_max: float = 100.0, *, denoiser: SigmaDenoiser | None = None
) -> torch.Tensor:
    """sigma_i = sigma_max (sigma_min / sigma_max)^(i/(N-1)), geometric (EDM Table 1, VE time steps)."""
    _check_steps(N)
    sigma_min, sigma_max = _supported_range(sigma_min, sigma_max, denoiser)
    frac = torch.arange(N, dtype=torch.float64) / max(N - 1, 1)
    return _finish_grid(sigma_max * (sigma_min / sigma_max) ** frac, denoiser)


def iddpm_sigma_grid(
    N: int,
    sigma_min: float = 0.002,
    sigma_max: float = 81.0,
    *,
    C_1: float = 0.001,
    C_2: float = 0.008,
    M: int = 1000,
    denoiser: SigmaDenoiser | None = None,
) -> torch.Tensor:
    """sigma_i = v_{round((L-1) i/(N-1))}, v the L levels u_j of EDM Table 1 (iDDPM) inside [sigma_min, sigma_max].

    This is generate.py's form of Table 1's u_{floor(j0 + (M-1-j0) i/(N-1) + 1/2)}: the range
    filter replaces j0 (sigma_max = 81 keeps u_j from j = 8 on).
    """
    _check_steps(N)
    sigma_min, sigma_max = _supported_range(sigma_min, sigma_max, denoiser)
    # generate.py L112-114 evaluates alpha_bar(j) on integer tensors, i.e. in float32, and only the u_j
    # recursion in float64; the float32 ratios move the small levels (u_999 by 5e-4 relative from float64's).
    j = torch.arange(M + 1, dtype=torch.float32)
    alpha_bar = torch.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2
    ratios = (alpha_bar[:-1] / alpha_bar[1:]).clamp(min=C_1)
    u = torch.zeros(M + 1, dtype=torch.float64)
    for k in range(M, 0, -1):
        u[k - 1] = torch.sqrt((u[k] ** 2 + 1) / ratios[k - 1] - 1)
    inside = u[(u >= sigma_min) & (u <= sigma_max)]
    if inside.numel() == 0:
        raise ValueError(f"no iDDPM noise level u_j lies in [sigma_min={sigma_min}, sigma_max={sigma_max}]")
    # torch.round (half to even) as in generate.py, so the picked levels are the official ones.
    idx = torch.round((inside.numel() - 1) / max(N - 1, 1) * torch.arange(N, dtype=torch.float64))
    return _finish_grid(inside[idx.to(torch.int64)], denoiser)


SIGMA_GRID_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "edm": edm_sigma_grid,
    "vp": vp_sigma_grid,
    "ve": ve_sigma_grid,
    "iddpm": iddpm_sigma_grid,
}


def sigma_grid(kind: str, N: int, *, denoiser: SigmaDenoiser | None = None, **options) -> torch.Tensor:
    """The N-step sigma grid of EDM's ablation discretisation ``kind`` (generate.py ``--disc``)."""
    if kind not in SIGMA_GRID_FUNCTIONS:
        raise ValueError(f"sigma grid {kind!r} is not one of {list(SIGMA_GRID_FUNCTIONS)}")
    return SIGMA_GRID_FUNCTIONS[kind](N, denoiser=denoiser, **options)


def _check_steps(N: int) -> None:
    if not isinstance(N, int) or isinstance(N, bool) or N < 1:
        raise ValueError(f"number of sampling steps N={N!r} must be a positive integer")


def _check_epsilon_s(epsilon_s: float) -> None:
    if not 0 < epsilon_s < 1:
        raise ValueError(f"VP epsilon_s={epsilon_s!r} must lie in (0, 1)")


def _supported_range(sigma_min: float, sigma_max: float, denoiser: SigmaDenoiser | None) -> tuple[float, float]:
    """Clamp to the network's range as generate.py does: max with net.sigma_min, min with net.sigma_max."""
    if denoiser is not None:
        sigma_min = max(sigma_min, denoiser.sigma_min)
        sigma_max = min(sigma_max, denoiser.sigma_max)
    if not 0 < sigma_min <= sigma_max < math.inf:
        raise ValueError(
            f"noise range sigma_min={sigma_min!r}, sigma_max={sigma_max!r} "
            "must satisfy 0 < sigma_min <= sigma_max < inf"
        )
    return float(sigma_min), float(sigma_max)


def _finish_grid(sigmas: torch.Tensor, denoiser: SigmaDenoiser | None) -> torch.Tensor:
    if denoiser is not None:
        sigmas = denoiser.round_sigma(sigmas).to(torch.float64)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
