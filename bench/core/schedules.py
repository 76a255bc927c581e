"""Noise schedules of discrete diffusion chains and the one conversion between timesteps and sigma.

Index convention: arrays are indexed by the 0-based step index ``n`` (what DDPM-family networks
receive), which is the paper's timestep ``t = n + 1``. All quantities are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """beta_t linear in t (Ho et al. 2020, Sec. 4), rescaled by 1000/T for other T (iDDPM)."""
    _check_T(T)
    scale = 1000.0 / T
    if scale * beta_T >= 1.0:
        raise ValueError(
            f"linear schedule with T={T} has beta_T = {scale * beta_T:g} >= 1 (betas rescaled by 1000/T); "
            f"T must be above {1000.0 * beta_T:g}"
        )
    return torch.linspace(scale * beta_1, scale * beta_T, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = min(1 - abar(t/T)/abar((t-1)/T), max_beta), abar(u) = cos^2((u+s)/(1+s) pi/2) (iDDPM Eq. 17)."""
    _check_T(T)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T={T!r} must be a positive integer")


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete forward chain q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)."""

    betas: torch.Tensor

    @classmethod
    def named(cls, name: str, T: int) -> DiscreteSchedule:
        if name == "linear":
            return cls(linear_betas(T))
        if name == "cosine":
            return cls(cosine_betas(T))
        raise ValueError(f"beta schedule {name!r} is not one of {list(SCHEDULES)}")

    @property
    def T(self) -> int:
        return self.betas.numel()

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        """alpha-bar_t = prod_{s<=t} alpha_s (Ho et al. 2020, Eq. 4)."""
        return torch.cumprod(self.alphas, dim=0)

    def sub_chain(self, grid: torch.Tensor) -> DiscreteSchedule:
        """The chain over ``grid`` (ascending 0-based steps), betas recomputed from alpha-bar (iDDPM respacing)."""
        abar = self.alpha_bars[grid]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return DiscreteSchedule(1.0 - abar / prev)


def posterior_coefficients(
    abar_s: torch.Tensor, abar_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var) for s < t (Ho et al. 2020, Eqs. 6-7, for any pair s < t).

    Returns (c0, ct, var). With alpha_{t|s} = abar_t / abar_s and beta_{t|s} = 1 - alpha_{t|s}:
    c0 = sqrt(abar_s) beta_{t|s} / (1 - abar_t), ct = sqrt(alpha_{t|s}) (1 - abar_s) / (1 - abar_t),
    var = (1 - abar_s) / (1 - abar_t) beta_{t|s} (beta-tilde).
    """
    alpha_ts = abar_t / abar_s
    beta_ts = 1.0 - alpha_ts
    c0 = torch.sqrt(abar_s) * beta_ts / (1.0 - abar_t)
    ct = torch.sqrt(alpha_ts) * (1.0 - abar_s) / (1.0 - abar_t)
    var = (1.0 - abar_s) / (1.0 - abar_t) * beta_ts
    return c0, ct, var


def sigma_of_alpha_bar(abar: torch.Tensor) -> torch.Tensor:
    """VE noise level of a VP marginal: x_t / sqrt(abar) = x_0 + sigma eps, sigma = sqrt((1-abar)/abar) (EDM Eq. 4)."""
    return torch.sqrt((1.0 - abar) / abar)


def alpha_bar_of_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of sigma_of_alpha_bar: abar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma**2)


def timestep_of_sigma(schedule: DiscreteSchedule, sigma: torch.Tensor) -> torch.Tensor:
    """The continuous 0-based step index whose sigma equals ``sigma``, by linear interpolation in log sigma.

    sigma(n) increases with n; values outside [sigma(0), sigma(T-1)] are clamped to the ends.
    """
    log_sig = torch.log(sigma_of_alpha_bar(schedule.alpha_bars))
    x = torch.log(torch.as_tensor(sigma, dtype=torch.float64)).clamp(log_sig[0], log_sig[-1])
    hi = torch.searchsorted(log_sig, x).clamp(1, schedule.T - 1)
    lo = hi - 1
    w = (x - log_sig[lo]) / (log_sig[hi] - log_sig[lo])
    return lo.to(torch.float64) + w
