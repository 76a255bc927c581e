"""score-SDE's VP and sub-VP SDEs (Song et al. 2021, Eqs. 11 and 12), the schedules of the vp_time space
(bench.core.spaces).

bench.core.denoiser.VPTimeScore reads a sigma-space denoiser in its coordinates.

dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1].
Its marginal is x_t = s(t) x_0 + sqrt(1 - s(t)^2) z with s(t) = exp(-1/2 int_0^t beta), so
x_t / s(t) = x_0 + sigma(t) z with sigma(t)^2 = exp(int_0^t beta) - 1 (EDM Eq. 4 and Table 1, VP:
beta_d = beta_max - beta_min). Any EDM-space denoiser D(x; sigma) therefore gives the VP score

    grad log p_t(x) = (s D(x / s; sigma(t)) - x) / (1 - s^2),

which for EDM's VPPrecond (D = x - sigma F) is score-SDE's own -F / sqrt(1 - s^2) (score = -eps / std).

The sub-VP SDE (``SubVPSDE``) shares beta(t) and the mean s(t) x_0; its std is 1 - s^2 and its g^2 is
beta(t) (1 - s^4), so g^2 = 2 s^2 sigma sigma' with sigma = std / s = 2 sinh(1/2 int_0^t beta): its
probability-flow ODE is EDM's Eq. 4 in that sigma, the same flow as the VE ODE of x / s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch

from bench.core.options import Range

# score-SDE configs/default_cifar10_configs.py (model.beta_min, model.beta_max) and the sampling
# eps of its run_lib.py for the VP SDE (sampling_eps = 1e-3).
BETA_MIN = 0.1
BETA_MAX = 20.0
SAMPLING_EPS = 1e-3


@dataclass(frozen=True)
class VPSDE:
    """beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1] (score-SDE ``sde_lib.VPSDE``)."""

    beta_min: float = BETA_MIN
    beta_max: float = BETA_MAX

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta_min) and math.isfinite(self.beta_max) and 0 < self.beta_min <= self.beta_max):
            raise ValueError(
                f"VP SDE beta_min={self.beta_min!r}, beta_max={self.beta_max!r} must satisfy 0 < beta_min <= beta_max"
            )

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: torch.Tensor | float) -> torch.Tensor:
        """int_0^t beta = beta_min t + 1/2 (beta_max - beta_min) t^2."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def scale(self, t: torch.Tensor | float) -> torch.Tensor:
        """s(t) = exp(-1/2 int_0^t beta), the signal coefficient of the marginal."""
        return torch.exp(-0.5 * self.integral(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = sqrt(exp(int_0^t beta) - 1), the noise level of x_t / s(t) (EDM Table 1, VP)."""
        return torch.sqrt(torch.expm1(self.integral(t)))

    def variance(self, t: torch.Tensor | float) -> torch.Tensor:
        """std(t)^2 = 1 - s(t)^2 = -expm1(-int_0^t beta), exact for small t (sde_lib.py VPSDE.marginal_prob L144)."""
        return -torch.expm1(-self.integral(t))

    def std(self, t: torch.Tensor | float) -> torch.Tensor:
        """std(t) of x_t given x_0."""
        return torch.sqrt(self.variance(t))

    def discount(self, t: torch.Tensor | float) -> float | torch.Tensor:
        """g(t)^2 / beta(t): 1 for the VP SDE (sde_lib.py L138, diffusion = sqrt(beta))."""
        return 1.0

    def discrete_beta(self, t: float | torch.Tensor, N: int) -> float:
        """beta_i of score-SDE's DDPM table linspace(beta_min / N, beta_max / N, N) at i = floor(t (N - 1))
        (sde_lib.py L125 and VPSDE.discretize L158-L159)."""
        index = math.floor(float(t) * (N - 1))
        return self.beta_min / N + index * (self.beta_max - self.beta_min) / (N * (N - 1))

    def reverse_diffusion(self, t: float | torch.Tensor, N: int) -> tuple[float, float]:
        """(a, b): the mean a x + b score of score-SDE's reverse-diffusion step at t with N steps.

        VPSDE.discretize is DDPM's (sde_lib.py L156-L164): f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i), and
        the reverse mean x - f + G^2 score (L105, sampling.py L198).
        """
        beta = self.discrete_beta(t, N)
        return 2.0 - math.sqrt(1.0 - beta), beta

    def time_grid(self, K: int, eps: Annotated[float, Range(gt=0, lt=1)] = SAMPLING_EPS) -> torch.Tensor:
        """K + 1 descending times: score-SDE's evaluation times linspace(1, eps, K), then t_K = 0.

        The samplers evaluate the score at t_0..t_{K-1}; score-SDE's EulerMaruyamaPredictor (and ours)
        steps by dt = -1/K from each, which ends at t_K = 0 exactly when eps = 1/K (its VP runs: eps =
        1e-3, K = N = 1000).
        """
        if not isinstance(K, int) or isinstance(K, bool) or K < 2:
            raise ValueError(f"number of VP SDE steps K={K!r} must be an integer >= 2")
        if not 0 < eps < 1:
            raise ValueError(f"VP SDE sampling eps={eps!r} must lie in (0, 1)")
        times = torch.linspace(1.0, eps, K, dtype=torch.float64)
        times[-1] = eps  # linspace's last entry can be off in the last bit
        return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """score-SDE's sub-VP SDE (Eq. 12, ``sde_lib.subVPSDE``): dx = -1/2 beta x dt + sqrt(beta (1 - s^4)) dw.

    Same beta(t), mean and times as the VP SDE; std(t) = 1 - s(t)^2 (sde_lib.py L195, no square root).
    """

    def variance(self, t: torch.Tensor | float) -> torch.Tensor:
        return torch.expm1(-self.integral(t)) ** 2

    def std(self, t: torch.Tensor | float) -> torch.Tensor:
        """std(t) = 1 - exp(-int_0^t beta) (sde_lib.py L195)."""
        return -torch.expm1(-self.integral(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = std / s = 2 sinh(1/2 int_0^t beta), the noise level of x_t / s(t)."""
        return 2.0 * torch.sinh(0.5 * self.integral(t))

    def time_of_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The t of sigma(t) = sigma: int_0^t beta = 2 asinh(sigma / 2), solved for t."""
        target = 2.0 * torch.asinh(0.5 * torch.as_tensor(sigma, dtype=torch.float64))
        d = self.beta_max - self.beta_min
        return 2.0 * target / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * target))

    def discount(self, t: torch.Tensor | float) -> torch.Tensor:
        """g(t)^2 / beta(t) = 1 - exp(-2 int_0^t beta) (sde_lib.py L188-L189)."""
        return -torch.expm1(-2.0 * self.integral(t))

    def discrete_beta(self, t: float | torch.Tensor, N: int) -> float:
        raise ValueError(
            "the sub-VP SDE has no discrete DDPM betas: score-SDE's ancestral sampling takes the VE and VP SDEs "
            "only (sampling.py L209-L210)"
        )

    def reverse_diffusion(self, t: float | torch.Tensor, N: int) -> tuple[float, float]:
        """(a, b): the mean a x + b score of score-SDE's reverse-diffusion step at t with N steps.

        subVPSDE keeps SDE.discretize's Euler-Maruyama (sde_lib.py L65-L69): f = -beta x / (2 N), G^2 = g^2 / N.
        """
        beta = float(self.beta(t))
        return 1.0 + 0.5 * beta / N, beta * float(self.discount(t)) / N
