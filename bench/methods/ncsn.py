"""NCSN / score-SDE (VE) family: noise levels, the VE network's score and the score matching losses.

``VENetworkScore`` is a bench.core.denoiser.ScoreFn: ``score_fn(x, sigma)`` returns grad_x log p_sigma(x)
(in x's dtype) for bench data in [-1, 1], where p_sigma is the law of x0 + sigma z, z ~ N(0, I) (the VE
marginal of Song & Ermon 2019 and of the VE SDE, Song et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.denoiser import LevelScore, ScoreAsSigmaDenoiser, as_level, check_sigma_range, param_dtype

# Our VE networks see c_noise = 999 t, t in [0, 1] the log-sigma position (score-SDE feeds t * 999 to
# its DDPM-style networks), so the MLP's sinusoidal embedding spans the same range as for DDPM.
NETWORK_TIME_SCALE = 999.0


def geometric_sigmas(sigma_min: float, sigma_max: float, L: int) -> torch.Tensor:
    """L levels in geometric progression from sigma_min to sigma_max, ascending float64 (NCSN Sec. 4.1)."""
    if not isinstance(L, int) or isinstance(L, bool) or L < 2:
        raise ValueError(f"number of noise levels L={L!r} must be an integer >= 2")
    check_sigma_range(sigma_min, sigma_max)
    levels = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), L, dtype=torch.float64))
    levels[0], levels[-1] = sigma_min, sigma_max  # exact ends: exp(log(s)) is off in the last bit
    return levels


@dataclass(frozen=True)
class VESchedule:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t for t in [0, 1] (score-SDE Sec. 3.4 VE SDE, App. C)."""

    sigma_min: float
    sigma_max: float

    def __post_init__(self) -> None:
        check_sigma_range(self.sigma_min, self.sigma_max)

    def levels(self, L: int) -> torch.Tensor:
        """L geometric levels spanning [sigma_min, sigma_max], ascending."""
        return geometric_sigmas(self.sigma_min, self.sigma_max, L)

    def sigma_of_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def time_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class VENetworkScore:
    """Our VE model: score(x, sigma) = F(x, 999 t(sigma)) / sigma, F trained by ``dsm_loss`` (NCSNv2 Technique 3).

    The ``ve`` family's adapter: the level samplers read it through ``with_levels`` and EDM's
    samplers through ``as_sigma_denoiser``; both views count their calls in this object's ``nfe``.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: VESchedule,
        *,
        levels: int = 1000,
        time_scale: float = NETWORK_TIME_SCALE,
    ):
        self.net = net
        self.schedule = schedule
        self.time_scale = time_scale
        self.sigmas = schedule.levels(levels)
        self.nfe = 0
        self._dtype = param_dtype(net)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        c = self.time_scale * float(self.schedule.time_of_sigma(s))
        t = torch.full((x.shape[0],), c, dtype=self._dtype, device=x.device)
        out = self.net(x.to(self._dtype), t).to(x.dtype)
        self.nfe += 1
        return out / s

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def as_score(self) -> VENetworkScore:
        """The ScoreFn view (this object): what the PF-ODE likelihood integrates."""
        return self

    def with_levels(self, sigmas: torch.Tensor) -> LevelScore:
        """This score on the level table ``sigmas`` (what annealed Langevin and PC index)."""
        return LevelScore(self, sigmas)

    def as_sigma_denoiser(self) -> ScoreAsSigmaDenoiser:
        """This score as EDM's D(x; sigma), for EDM's samplers (EDM Table 2, VE column)."""
        return ScoreAsSigmaDenoiser(self, self.sigma_min, self.sigma_max)


def dsm_loss(net: nn.Module, schedule: VESchedule, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """NCSN DSM with lambda(sigma) = sigma^2: 1/2 E ||sigma s(x0 + sigma z, sigma) + z||^2 (NCSN Eqs. 5-6).

    With s = F / sigma (``VENetworkScore``) this is 1/2 E ||F(x0 + sigma z, 999 t) + z||^2. sigma is
    log-uniform on [sigma_min, sigma_max] (t ~ U(0, 1), score-SDE's continuous VE training) rather
    than uniform over L fixed levels, so one network serves every level table and the PF-ODE.
    The argument order follows bench.families.ddpm.simple_loss.
    """
    shape = (x0.shape[0],) + (1,) * (x0.dim() - 1)
    t = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    sigma = schedule.sigma_of_time(t).to(x0.device, x0.dtype).view(shape)
    z = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
    out = net(x0 + sigma * z, (NETWORK_TIME_SCALE * t).to(x0.device, x0.dtype))
    return 0.5 * ((out + z) ** 2).flatten(1).sum(1).mean()


def ssm_loss(net: nn.Module, schedule: VESchedule, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise-conditional sliced score matching, variance-reduced (Song et al. 2019, Eq. 8; NCSN Sec. 4.2):
    E sigma^2 [1/2 ||s(x~, sigma)||^2 + v^T grad_x~ (v^T s(x~, sigma))], x~ = x0 + sigma z, v ~ N(0, I).

    NCSN's ``anneal_sliced_score_estimation_vr`` (losses/sliced_sm.py L145-L171, its ``ssm`` baseline in
    runners/anneal_runner.py L144): one Gaussian v per sample (L155), 1/2 ||s||^2 in place of 1/2 (v^T s)^2
    (L162), weight lambda(sigma) = sigma^2 (L169). sigma and the network's time input as ``dsm_loss``, so
    the two objectives train the same parametrisation s = F / sigma. The Jacobian term needs autograd, so
    the loss builds its graph even where the caller evaluates it under no_grad (a held-out loss).
    """
    shape = (x0.shape[0],) + (1,) * (x0.dim() - 1)
    t = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    sigma = schedule.sigma_of_time(t).to(x0.device, x0.dtype).view(shape)
    z = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
    v = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
    with torch.enable_grad():
        x = (x0 + sigma * z).requires_grad_(True)
        score = net(x, (NETWORK_TIME_SCALE * t).to(x0.device, x0.dtype)) / sigma
        jvp = torch.autograd.grad((score * v).sum(), x, create_graph=True)[0]
        per_sample = 0.5 * (score**2).flatten(1).sum(1) + (v * jvp).flatten(1).sum(1)
        return (sigma.flatten() ** 2 * per_sample).mean()
