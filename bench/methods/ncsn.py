"""NCSN / score-SDE (VE) family: noise levels, score adapters and the denoising score matching loss.

Every adapter is a ``ScoreFn``: ``score_fn(x, sigma)`` returns grad_x log p_sigma(x) (in x's dtype) for
bench data in [-1, 1], where p_sigma is the law of x0 + sigma z, z ~ N(0, I) (the VE marginal of
Song & Ermon 2019 and of the VE SDE, Song et al. 2021). ``.sigmas`` is the ascending float64
table of levels the samplers index (index n, larger n = more noise, as for the discrete chains:
the paper's sigma_1 > ... > sigma_L is ``sigmas[L - 1], ..., sigmas[0]``), and ``.nfe`` counts
network evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, alpha_bar_of_sigma, sigma_of_alpha_bar, timestep_of_sigma

# Our VE networks see c_noise = 999 t, t in [0, 1] the log-sigma position (score-SDE feeds t * 999 to
# its DDPM-style networks), so the MLP's sinusoidal embedding spans the same range as for DDPM.
NETWORK_TIME_SCALE = 999.0


@runtime_checkable
class ScoreFn(Protocol):
    """What the VE samplers and the PF-ODE likelihood call: ``score_fn(x, sigma) -> score`` (in x's dtype)."""

    sigmas: torch.Tensor
    nfe: int

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor: ...


def geometric_sigmas(sigma_min: float, sigma_max: float, L: int) -> torch.Tensor:
    """L levels in geometric progression from sigma_min to sigma_max, ascending float64 (NCSN Sec. 4.1)."""
    if not isinstance(L, int) or isinstance(L, bool) or L < 2:
        raise ValueError(f"number of noise levels L={L!r} must be an integer >= 2")
    _check_range(sigma_min, sigma_max)
    levels = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), L, dtype=torch.float64))
    levels[0], levels[-1] = sigma_min, sigma_max  # exact ends: exp(log(s)) is off in the last bit
    return levels


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"noise range sigma_min={sigma_min!r}, sigma_max={sigma_max!r} must satisfy 0 < min < max")


@dataclass(frozen=True)
class VESchedule:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t for t in [0, 1] (score-SDE Sec. 3.4 VE SDE, App. C)."""

    sigma_min: float
    sigma_max: float

    def __post_init__(self) -> None:
        _check_range(self.sigma_min, self.sigma_max)

    def levels(self, L: int) -> torch.Tensor:
        """L geometric levels spanning [sigma_min, sigma_max], ascending."""
        return geometric_sigmas(self.sigma_min, self.sigma_max, L)

    def sigma_of_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def time_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


def as_level(sigma: float | torch.Tensor) -> torch.Tensor:
    """A noise level as a positive finite float64 scalar tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.numel() != 1 or not torch.isfinite(s) or s <= 0:
        raise ValueError(f"noise level sigma={sigma!r} must be one positive finite number")
    return s.reshape(())


def check_level_grid(grid: torch.Tensor, L: int) -> torch.Tensor:
    """``grid`` as ascending, unique int64 indices into a table of L levels."""
    g = torch.as_tensor(grid)
    if g.dim() != 1 or g.numel() == 0 or g.is_floating_point():
        raise ValueError(f"level grid must be a non-empty 1-D integer tensor, got {g!r}")
    if g[0] < 0 or g[-1] >= L or torch.any(g[1:] <= g[:-1]):
        raise ValueError(f"level grid {g.tolist()} must be ascending unique indices in [0, {L - 1}]")
    return g.to(torch.int64)


def _param_dtype(net: Callable) -> torch.dtype:
    if isinstance(net, nn.Module):
        p = next(net.parameters(), None)
        if p is not None:
            return p.dtype
    return torch.float64


class NoiseConditionalScore:
    """Score from a network on level indices, net(a x + b, y) = grad log p (NCSN/NCSNv2 s_theta(x, sigma_y)).

    The network's data live in ``data_range`` = [lo, hi] (NCSNv2: [0, 1]), bench data in [-1, 1]:
    x_net = a x + b with a = (hi - lo) / 2, b = (hi + lo) / 2. Then sigma_net = a sigma and, since
    p(x) = p_net(a x + b) a^d, score(x, sigma) = a s_net(a x + b, a sigma). ``net_sigmas`` is the
    network's own level table (its order defines y; NCSNv2: ``net.sigmas``, descending).
    Only the levels of that table are accepted.
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        net_sigmas: torch.Tensor,
        *,
        data_range: tuple[float, float] = (0.0, 1.0),
        rtol: float = 1e-6,
    ):
        lo, hi = data_range
        if not hi > lo:
            raise ValueError(f"data_range={data_range!r} must be (lo, hi) with hi > lo")
        self.net = net
        self.scale = (hi - lo) / 2.0
        self.shift = (hi + lo) / 2.0
        table = torch.as_tensor(net_sigmas).detach().to("cpu", torch.float64) / self.scale
        order = torch.argsort(table)
        self.sigmas = table[order]
        self._net_index = order
        self.rtol = rtol
        self.nfe = 0
        self._dtype = _param_dtype(net)

    def level_index(self, sigma: float | torch.Tensor) -> int:
        """The network's index y of level ``sigma`` (in bench scale)."""
        s = as_level(sigma)
        n = int(torch.argmin(torch.abs(torch.log(self.sigmas / s))))
        if abs(float(self.sigmas[n] / s) - 1.0) > self.rtol:
            raise ValueError(
                f"sigma={float(s)!r} is not one of the network's levels (nearest {float(self.sigmas[n])!r}); "
                "a noise-conditional network is defined on its own table only"
            )
        return int(self._net_index[n])

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        y = torch.full((x.shape[0],), self.level_index(sigma), dtype=torch.int64, device=x.device)
        out = self.net((self.scale * x + self.shift).to(self._dtype), y)
        self.nfe += 1
        return self.scale * out.to(x.dtype)


class VEDenoiserScore:
    """Score of a VE denoiser D(x; sigma) ~ E[x0 | x]: (D(x; sigma) - x) / sigma^2 (Tweedie; EDM Eq. 3).

    ``denoiser`` follows bench.methods.edm.SigmaDenoiser: x and one scalar sigma in, x's dtype out
    (wrap a raw EDM network in bench.methods.edm.PrecondDenoiser). ``sigmas`` defaults to 1000 geometric
    levels over the denoiser's [sigma_min, sigma_max].
    """

    def __init__(
        self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sigmas: torch.Tensor | None = None
    ):
        self.denoiser = denoiser
        if sigmas is None:
            if not (hasattr(denoiser, "sigma_min") and hasattr(denoiser, "sigma_max")):
                raise ValueError("give the level table `sigmas`: the denoiser has no sigma_min / sigma_max")
            sigmas = geometric_sigmas(float(denoiser.sigma_min), float(denoiser.sigma_max), 1000)
        self.sigmas = _ascending_table(sigmas)
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        d = self.denoiser(x, s).to(x.dtype)
        self.nfe += 1
        return (d - x) / s**2


class VPEpsScore:
    """Score of a discrete VP eps network at a VE level: x_vp = sqrt(abar) x, score = -eps(x_vp, n(sigma)) / sigma.

    abar = 1 / (1 + sigma^2) and the (continuous) step n(sigma) come from bench.core.schedules, the one
    sigma <-> timestep conversion (x_vp / sqrt(abar) = x0 + sigma eps, EDM Eq. 4); levels outside the chain's
    [sigma(0), sigma(T-1)] are refused. The default level table is the chain's own sigma(n).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: DiscreteSchedule,
        *,
        time_scale: float = 1.0,
        sigmas: torch.Tensor | None = None,
        rtol: float = 1e-9,
    ):
        self.net = net
        self.schedule = schedule
        self.time_scale = time_scale
        chain = sigma_of_alpha_bar(schedule.alpha_bars)
        self._lo, self._hi = float(chain[0]) * (1 - rtol), float(chain[-1]) * (1 + rtol)
        self.sigmas = chain if sigmas is None else _ascending_table(sigmas)
        if self.sigmas[0] < self._lo or self.sigmas[-1] > self._hi:
            raise ValueError(
                f"level table [{float(self.sigmas[0])!r}, {float(self.sigmas[-1])!r}] exceeds the chain's "
                f"sigma range [{float(chain[0])!r}, {float(chain[-1])!r}]"
            )
        self.nfe = 0
        self._dtype = _param_dtype(net)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        if not self._lo <= float(s) <= self._hi:
            raise ValueError(
                f"sigma={float(s)!r} lies outside the VP chain's sigma range [{self._lo!r}, {self._hi!r}]"
            )
        n = timestep_of_sigma(self.schedule, s)
        abar = alpha_bar_of_sigma(s)
        t = torch.full((x.shape[0],), float(n) * self.time_scale, dtype=self._dtype, device=x.device)
        eps = self.net((torch.sqrt(abar) * x).to(self._dtype), t).to(x.dtype)
        self.nfe += 1
        return -eps / s


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
        self._dtype = _param_dtype(net)

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


class LevelScore:
    """A ScoreFn read on its own level table: calls (and NFE) go to ``score``; x_T ~ N(0, sigma_max^2 I)."""

    def __init__(self, score: ScoreFn, sigmas: torch.Tensor):
        self.score = score
        self.sigmas = _ascending_table(sigmas)

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return self.score(x, sigma)

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """The VE prior at the largest visited level (score-SDE ``prior_sampling``), per-sample seeded."""
        return self.sigmas[check_level_grid(grid, len(self.sigmas))[-1]] * noise.latent()


class ScoreAsSigmaDenoiser:
    """D(x; sigma) = x + sigma^2 score(x, sigma), the VE score in EDM's sigma space (Tweedie; EDM Eq. 3).

    Continuous in sigma (``round_sigma`` is the identity) on [sigma_min, sigma_max]; calls and NFE
    go to ``score``.
    """

    def __init__(self, score: ScoreFn, sigma_min: float, sigma_max: float):
        _check_range(sigma_min, sigma_max)
        self.score = score
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        return x + s**2 * self.score(x, s)

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """x_T ~ N(0, grid[0]^2 I), as EDM's generate.py scales its latents by t_0."""
        return grid[0] * noise.latent()


def _ascending_table(sigmas: torch.Tensor) -> torch.Tensor:
    table = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if table.dim() != 1 or table.numel() < 1 or torch.any(table <= 0) or torch.any(table[1:] <= table[:-1]):
        raise ValueError(f"level table must be 1-D, positive and strictly ascending, got {table.tolist()}")
    return table


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
