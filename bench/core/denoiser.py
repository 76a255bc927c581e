"""The one denoiser protocol: the views a sampler calls and the conversions between them.

Every family adapts its network to one of these views (bench.families); a sampler calls the view of its
space (bench.core.spaces), reached by the conversions below. ``nfe`` counts network evaluations on the
object that calls the network; every conversion reads its source's count, so tables report measured NFE.

Views (protocols):
- ``EpsDenoiser``: ``denoiser(x_n, n) -> Prediction(eps, x0)`` on a discrete VP chain (DDPM Eq. 15), with
  its ``schedule`` and ``alpha_bars``.
- ``SigmaDenoiser``: ``D(x; sigma) -> x0`` for x = y + sigma n (EDM Eq. 1), with [sigma_min, sigma_max] and
  ``round_sigma``.
- ``ScoreFn``: ``score(x, sigma) -> grad_x log p_sigma(x)``, p_sigma the law of x0 + sigma z (NCSN, VE SDE),
  with ``.sigmas``, the ascending level table the level samplers index.
- VP-SDE time score: ``score(x, t) -> grad_x log p_t(x)`` of score-SDE's VP SDE (``VPTimeScore``).

Conversions:

===================  =====================  ================================================================
from                 to                     how (equation)
===================  =====================  ================================================================
eps (chain)          x0                     x0 = x_n / sqrt(abar_n) - sqrt(1/abar_n - 1) eps (DDPM Eq. 15):
                                            ``DiscreteEpsDenoiser.x0_of``
eps (chain)          sigma (D)              D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), n(sigma)) (EDM
                                            Eq. 4, Table 1 iDDPM): ``DiscreteVPAsSigma``
sigma (D)            score                  (D(x; sigma) - x) / sigma^2 (Tweedie; EDM Eq. 3): ``VEDenoiserScore``
score                sigma (D)              D = x + sigma^2 score (Tweedie; EDM Eq. 3): ``ScoreAsSigmaDenoiser``
score                score on levels        the same score indexed by a level table: ``LevelScore``
sigma (D)            VP-SDE time score      (s D(x / s; sigma(t)) - x) / (1 - s^2) (EDM Eq. 4, score-SDE
                                            Eq. 11): ``VPTimeScore``
any family's view    sigma (D)              its own ``as_sigma_denoiser()``, else the chain's: ``as_sigma``
===================  =====================  ================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, sigma_of_alpha_bar


class NonFiniteOutputError(RuntimeError):
    """The network returned NaN or Inf: carries the step and the first bad sample's index in the batch."""

    def __init__(self, step: int, index: int):
        super().__init__(f"network output is not finite at step {step} for batch index {index}")
        self.step = step
        self.index = index


def check_finite(out: torch.Tensor, step: int) -> None:
    """Raise NonFiniteOutputError naming the step and the first sample whose output is NaN or Inf."""
    if math.isfinite(out.sum().item()):
        return  # the common case costs one sum (NaN and Inf propagate); locate the bad sample only on failure
    finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise NonFiniteOutputError(step, int(torch.nonzero(~finite)[0]))


class SigmaDenoiser(Protocol):
    """D(x; sigma) -> estimate of the clean data in x's dtype, with the noise range it supports."""

    sigma_min: float
    sigma_max: float

    @property
    def nfe(self) -> int: ...

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScoreFn(Protocol):
    """What the VE samplers and the PF-ODE likelihood call: ``score_fn(x, sigma) -> score`` (in x's dtype).

    ``sigmas`` is the ascending float64 table of levels the samplers index (index n, larger n = more noise,
    as for the discrete chains: the paper's sigma_1 > ... > sigma_L is ``sigmas[L - 1], ..., sigmas[0]``).
    """

    sigmas: torch.Tensor
    nfe: int

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor: ...


@dataclass
class Prediction:
    """What a denoiser returns at one step: predicted noise and clean image (in the sampler state's dtype)."""

    eps: torch.Tensor
    x0: torch.Tensor


class EpsDenoiser(Protocol):
    """``denoiser(x_n, n) -> Prediction`` on a discrete VP chain of ``schedule`` (``alpha_bars`` its abar_n)."""

    schedule: DiscreteSchedule
    alpha_bars: torch.Tensor
    nfe: int

    def __call__(self, x: torch.Tensor, n: int) -> Prediction: ...


class DiscreteEpsDenoiser:
    """An eps network on a discrete chain: x0 = x_n / sqrt(abar_n) - sqrt(1 / abar_n - 1) eps (DDPM Eq. 15)."""

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, *, time_scale: float = 1.0):
        self.net = net
        self.schedule = schedule
        self.alpha_bars = schedule.alpha_bars
        self.time_scale = time_scale
        self.nfe = 0
        self._param = next(net.parameters())
        # 1 / sqrt(abar_n) and sqrt(1 / abar_n - 1) per step, once, in float64 (DDPM's sqrt_recip_alphas_cumprod
        # and sqrt_recipm1_alphas_cumprod).
        self._recip_sqrt_abar = torch.rsqrt(self.alpha_bars).tolist()
        self._sqrt_recip_m1_abar = torch.sqrt(1.0 / self.alpha_bars - 1.0).tolist()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, n: int) -> Prediction:
        t = torch.full((x.shape[0],), float(n) * self.time_scale, device=x.device)
        out = self.net(x.to(self._param.dtype), t.to(self._param.dtype))
        self.nfe += 1
        check_finite(out, n)  # before any cast to the state's dtype, which keeps every value finite or not
        eps = out.to(x.dtype)
        return Prediction(eps=eps, x0=self.x0_of(x, eps, n))

    def x0_of(self, x: torch.Tensor, eps: torch.Tensor, n: int) -> torch.Tensor:
        """x0 = x_n / sqrt(abar_n) - sqrt(1 / abar_n - 1) eps (DDPM Eq. 15), two ops into a fresh tensor."""
        return torch.mul(x, self._recip_sqrt_abar[n]).add_(eps, alpha=-self._sqrt_recip_m1_abar[n])


def clip_prediction(pred: Prediction, x: torch.Tensor, abar: torch.Tensor) -> Prediction:
    """Clip x0 to [-1, 1] and recompute eps from it, so that the update stays self-consistent."""
    x0 = pred.x0.clamp(-1.0, 1.0)
    eps = (x - torch.sqrt(abar) * x0) / torch.sqrt(1.0 - abar)
    return Prediction(eps=eps, x0=x0)


def predict(denoiser, x: torch.Tensor, n: int, abar: torch.Tensor, *, clip_x0: bool) -> Prediction:
    """One denoiser call at step n, with x0 optionally clipped (the first move of every reverse step)."""
    pred = denoiser(x, n)
    return clip_prediction(pred, x, abar) if clip_x0 else pred


def predict_x0(denoiser, x: torch.Tensor, n: int, *, clip_x0: bool) -> torch.Tensor:
    """x0_hat of one denoiser call at step n, clipped to [-1, 1] when asked (DDPM's mean needs no eps)."""
    x0 = denoiser(x, n).x0
    return x0.clamp(-1.0, 1.0) if clip_x0 else x0


# ---------------------------------------------------------------------------------------------
# Noise levels: one scalar sigma per call, level tables ascending


def as_level(sigma: float | torch.Tensor) -> torch.Tensor:
    """A noise level as a positive finite float64 scalar tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.numel() != 1 or not torch.isfinite(s) or s <= 0:
        raise ValueError(f"noise level sigma={sigma!r} must be one positive finite number")
    return s.reshape(())


def scalar_sigma(sigma: torch.Tensor | float) -> torch.Tensor:
    """One positive noise level per call as a float64 scalar (EDM's samplers call with one sigma per step)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if sigma.numel() != 1 or not sigma.item() > 0:
        raise ValueError(f"sigma must be one positive noise level per call, got {sigma.tolist()}")
    return sigma.reshape(())


def check_level_grid(grid: torch.Tensor, L: int) -> torch.Tensor:
    """``grid`` as ascending, unique int64 indices into a table of L levels."""
    g = torch.as_tensor(grid)
    if g.dim() != 1 or g.numel() == 0 or g.is_floating_point():
        raise ValueError(f"level grid must be a non-empty 1-D integer tensor, got {g!r}")
    if g[0] < 0 or g[-1] >= L or torch.any(g[1:] <= g[:-1]):
        raise ValueError(f"level grid {g.tolist()} must be ascending unique indices in [0, {L - 1}]")
    return g.to(torch.int64)


def ascending_table(sigmas: torch.Tensor) -> torch.Tensor:
    """A level table as a 1-D, positive, strictly ascending float64 CPU tensor."""
    table = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if table.dim() != 1 or table.numel() < 1 or torch.any(table <= 0) or torch.any(table[1:] <= table[:-1]):
        raise ValueError(f"level table must be 1-D, positive and strictly ascending, got {table.tolist()}")
    return table


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    """Refuse a noise range unless 0 < sigma_min < sigma_max, both finite."""
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"noise range sigma_min={sigma_min!r}, sigma_max={sigma_max!r} must satisfy 0 < min < max")


def param_dtype(net) -> torch.dtype:
    """The dtype a network computes in: its first parameter's, float64 for a parameterless callable."""
    if isinstance(net, nn.Module):
        p = next(net.parameters(), None)
        if p is not None:
            return p.dtype
    return torch.float64


def sigma_prior(noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
    """x_T ~ N(0, grid[0]^2 I), as EDM's generate.py scales its latents by t_0."""
    return grid[0] * noise.latent()


# ---------------------------------------------------------------------------------------------
# Conversions between the views


class DiscreteVPAsSigma:
    """A discrete VP eps-denoiser in sigma space: D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), n(sigma)).

    x = x_n / sqrt(abar_n) turns the VP chain into x = y + sigma n with sigma = sqrt((1 - abar)/abar)
    (EDM Eq. 4). As EDM's iDDPMPrecond (Table 1, 'iDDPM' column), only the network's step index is
    snapped to the nearest discrete sigma (by absolute distance); c_in = 1/sqrt(1 + sigma^2) and
    c_out = -sigma use sigma as given, which on a rounded grid is the snapped value itself.
    """

    def __init__(self, denoiser: EpsDenoiser):
        self.denoiser = denoiser
        self.sigmas = sigma_of_alpha_bar(denoiser.alpha_bars)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def step_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The 0-based discrete step whose sigma is nearest to each element of ``sigma``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma.reshape(-1, 1) - self.sigmas.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigmas[self.step_of_sigma(sigma)]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = scalar_sigma(sigma)
        n = int(self.step_of_sigma(sigma))
        s = float(sigma)
        eps = self.denoiser(torch.mul(x, 1.0 / math.sqrt(1.0 + s * s)), n).eps
        return torch.add(x, eps, alpha=-s)

    prior = staticmethod(sigma_prior)


def as_sigma(denoiser) -> SigmaDenoiser:
    """A family's denoiser in EDM's sigma space: its own view where it has one, else the discrete VP chain's."""
    own = getattr(denoiser, "as_sigma_denoiser", None)
    return own() if own is not None else DiscreteVPAsSigma(denoiser)


class VEDenoiserScore:
    """Score of a VE denoiser D(x; sigma) ~ E[x0 | x]: (D(x; sigma) - x) / sigma^2 (Tweedie; EDM Eq. 3).

    ``denoiser`` is a SigmaDenoiser: x and one scalar sigma in, x's dtype out; ``sigmas`` the level table.
    """

    def __init__(self, denoiser: SigmaDenoiser, sigmas: torch.Tensor):
        self.denoiser = denoiser
        self.sigmas = ascending_table(sigmas)
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        d = self.denoiser(x, s).to(x.dtype)
        self.nfe += 1
        return (d - x) / s**2


class LevelScore:
    """A ScoreFn read on its own level table: calls (and NFE) go to ``score``; x_T ~ N(0, sigma_max^2 I)."""

    def __init__(self, score: ScoreFn, sigmas: torch.Tensor):
        self.score = score
        self.sigmas = ascending_table(sigmas)

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
        check_sigma_range(sigma_min, sigma_max)
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

    prior = staticmethod(sigma_prior)


class VPTimeScore:
    """The VP-SDE score grad log p_t(x) = (s D(x / s; sigma(t)) - x) / (1 - s^2) of a SigmaDenoiser D.

    score-SDE's VP SDE (bench.core.vp_schedule.VPSDE: ``sigma(t)``, ``scale(t)`` = s(t), ``integral(t)``) has
    x_t / s(t) = x_0 + sigma(t) z (EDM Eq. 4); for EDM's VPPrecond (D = x - sigma F) this is score-SDE's own
    -F / sqrt(1 - s^2). Every time the sampler visits must map into the denoiser's [sigma_min, sigma_max]
    (relative slack ``rtol``, for ranges the network stores in float32), else the call is refused. Calls
    and NFE go to the denoiser.
    """

    def __init__(self, denoiser: SigmaDenoiser, sde, *, rtol: float = 1e-5):
        self.denoiser = denoiser
        self.sde = sde
        self._lo = float(denoiser.sigma_min) * (1 - rtol)
        self._hi = float(denoiser.sigma_max) * (1 + rtol)

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def check_times(self, times: torch.Tensor) -> None:
        """Refuse times whose sigma(t) lies outside the denoiser's noise range."""
        sig = self.sde.sigma(times)
        if torch.any(sig < self._lo) or torch.any(sig > self._hi):
            raise ValueError(
                f"VP SDE times [{float(times.min())!r}, {float(times.max())!r}] map to sigma in "
                f"[{float(sig.min())!r}, {float(sig.max())!r}], outside the denoiser's range "
                f"[{float(self.denoiser.sigma_min)!r}, {float(self.denoiser.sigma_max)!r}]"
            )

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = scalar_time(t)
        self.check_times(t)
        sigma = self.sde.sigma(t)
        s = self.sde.scale(t)
        d = self.denoiser(x / s, sigma).to(x.dtype)
        # 1 - s^2 = -expm1(-int beta), exact for small t.
        return (s * d - x) / (-torch.expm1(-self.sde.integral(t)))

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """x_1 ~ N(0, I), score-SDE's ``VPSDE.prior_sampling``."""
        return noise.latent()


def scalar_time(t: torch.Tensor | float) -> torch.Tensor:
    """A VP-time score's one time per call, as a float64 scalar; refuses several."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.numel() != 1:
        raise ValueError(f"one time per call, got {t.tolist()}")
    return t.reshape(())
