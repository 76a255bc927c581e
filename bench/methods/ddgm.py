"""DDGM: diffusion with Gamma noise and with two-Gaussian mixture noise (Nachmani, San Roman, Wolf).

Papers: "Denoising Diffusion Gamma Models" (arXiv:2110.05948, ICLR-2022 submission) for the Gamma
process; "Non Gaussian Denoising Diffusion Models" (arXiv:2106.07582) for the mixture noise. Steps
are 0-based (``n`` = paper t - 1), as in bench.core.schedules; everything is float64.

Gamma process. theta_n = sqrt(abar_n) theta_0, kbar_n = sum_{m<=n} k_m, and k_n is either
``code``: beta_n / (abar_n theta_0^2), the default (Sec. 4.1 and the public code,
`leosegre/Gamma-Diffusion-Domain-Adaptation` functions/denoising.py), or
``paper``: beta_n / (alpha_n theta_0^2) (Sec. 3.2.1 / Lemma 1).
Forward step: x_n = sqrt(alpha_n) x_{n-1} + (g_n - k_n theta_n), g_n ~ Gamma(k_n, theta_n).
Closed form (Lemma 1): x_n = sqrt(abar_n) x_0 + (gbar_n - kbar_n theta_n),
gbar_n ~ Gamma(kbar_n, theta_n).

Which convention is consistent. Because sqrt(abar_n / abar_m) theta_m = theta_n, every scaled step
noise of the chain is Gamma(k_m, theta_n), so their sum is Gamma(kbar_n, theta_n): the closed form
is the exact law of the chain under *either* k_n. What the paper's k_n breaks is the variance.
Code: k_n theta_n^2 = beta_n and kbar_n theta_n^2 = abar_n sum_m beta_m / abar_m = 1 - abar_n
exactly, so the Lemma-2 target (gbar - kbar theta) / sqrt(1 - abar) has unit variance and
x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) (DDPM Eq. 15) holds. Paper: kbar_n theta_n^2 =
abar_n sum_m beta_m / alpha_m, which is 4e-4 instead of 1 at n = T-1 for the linear T = 1000
schedule: x_T is not noise and the normalised target is far from unit variance. ``paper`` is kept
only to show this.

Gamma draws (Marsaglia & Tsang 2000, "A simple method for generating gamma variables"). For shape
a >= 1: d = a - 1/3, c = 1 / sqrt(9 d), proposal v = (1 + c z)^3 with z ~ N(0, 1), accepted when
v > 0 and log u < z^2/2 + d - d v + d log v, u ~ U(0, 1); then g / theta = d v. For a < 1 the
boost Gamma(a) = Gamma(a + 1) U^(1/a) is used. Each element gets at most ``proposals`` proposals
and takes the first accepted one; if all are rejected (probability below 0.049^proposals, under
4e-11 for the default 8) it takes the proposal z = 0, i.e. d v = d. Proposal j uses
``draws.normal(j)`` and ``draws.uniform(j)``, the boost ``draws.uniform(proposals)``; a later
proposal is only drawn while some element still waits for one, which changes no value because
every draw of a sample is a pure function of its own seed (bench.core.noise). The centred value
g - a theta is computed as theta (d (v - 1) - 1/3) with v - 1 expanded, so it keeps its precision
when a is ~1e10 (theta_0 = 1e-3).

Mixture noise. eps ~ p N(mu_1, phi^2) + (1 - p) N(mu_2, phi^2) with
mu_1 = sqrt((1 - phi^2)(1 - p) / p) and mu_2 = -p mu_1 / (1 - p): zero mean and unit variance for
0 < phi^2 <= 1 and 0 < p < 1; phi^2 is the variance of each component (phi^2 = 1 is N(0, 1);
phi^2 -> 0 leaves two atoms mu_1 - mu_2 = sqrt((1 - phi^2) / (p (1 - p))) apart). Source: only
the first page of arXiv:2106.07582 could be retrieved, so this is the parameterisation of the two
public implementations found, which agree with each other (`leosegre/Gamma-Diffusion-Domain-
Adaptation` functions/losses.py `gauss2_estimation_loss`, and a `mix_gaussian_ddpm` class), both
writing mu_1 = sqrt((1 - phi^2) / (p (1 - p) + p^3 / (1 - p) + 2 p^2)), the same number. Both
vary phi with t (linearly in t, resp. in sqrt(abar_t)). Here phi^2 is one constant by default;
``phi2_end`` gives the DDGM code's law, phi_n linear in n from sqrt(phi2) at n = 0 to
sqrt(phi2_end) at n = T - 1 (``mixture_phi2_schedule``), each step's noise keeping zero mean and
unit variance. That code publishes no values for the two ends, and its sampler builds phi from the
start value twice (runners/diffusion.py L498-499, a constant phi) where training uses both ends
(L227-228); here sampling and the prior use the law the model was trained with. Both
implementations define the forward process by its marginal x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps
(`mixture_q_sample`, used for training): the Markov chain x_n = sqrt(alpha_n) x_{n-1} + sqrt(beta_n) eps_n
has no two-component closed form (its marginal is a 2^(n+1)-component mixture with the same mean and variance but
another fourth cumulant). Loss: L1, as for Gamma. The ``ddgm`` family (bench.families.ddgm) holds a
model's noise law, its L1 losses and its denoiser.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from bench.core import noise as counter_noise
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule

K_CONVENTIONS = ("code", "paper")
# The keys each kind of ``models.<name>.noise`` entry takes (NAMES.md).
NOISE_KEYS = {"gamma": ("kind", "k_t"), "gaussian_mixture": ("kind", "phi2", "phi2_end")}
DEFAULT_PROPOSALS = 8
DEFAULT_THETA_0 = 0.001  # the DDGM experiments (images and speech)


class Draws(Protocol):
    """Independent standard draws of one shape: ``normal(j)``, ``uniform(j)``, the j-th of each."""

    def normal(self, j: int) -> torch.Tensor: ...

    def uniform(self, j: int) -> torch.Tensor: ...


class StepDraws:
    """Per-sample draws of sampler step ``step`` (extras 2j and 2j + 1 of the step's noise), in float64.

    Whatever the sampler state's dtype: Marsaglia-Tsang's centred Gamma is a small difference of
    large numbers at DDGM's shapes k_t, so the draws and the Gamma stay in float64.
    """

    def __init__(self, source: NoiseSource, step: int):
        self.source = source.with_dtype(torch.float64)
        self.step = step

    def normal(self, j: int) -> torch.Tensor:
        return self.source.normal(self.step, extra=2 * j)

    def uniform(self, j: int) -> torch.Tensor:
        return self.source.uniform(self.step, extra=2 * j + 1)


class LatentDraws:
    """Per-sample draws for the initial latent x_T.

    Streams m << 32 (m >= 1) have zero low bits, which no sampler step's stream has (NoiseSource
    gives step k the low bits k + 1), and m = 0 is the Gaussian latent of ``NoiseSource.latent``.
    """

    def __init__(self, source: NoiseSource):
        self.source = source

    def normal(self, j: int) -> torch.Tensor:
        return counter_noise.normal(self.source.seeds, (2 * j + 1) << 32, self.source.shape)

    def uniform(self, j: int) -> torch.Tensor:
        return counter_noise.uniform(self.source.seeds, (2 * j + 2) << 32, self.source.shape)


class GeneratorDraws:
    """Training-time draws from a torch.Generator, taken in call order (j only names the draw)."""

    def __init__(self, gen: torch.Generator, shape: tuple[int, ...]):
        self.gen = gen
        self.shape = tuple(shape)

    def normal(self, j: int) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.gen, dtype=torch.float64)

    def uniform(self, j: int) -> torch.Tensor:
        return torch.rand(self.shape, generator=self.gen, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Gamma variables


def _check_proposals(proposals: int) -> None:
    if not isinstance(proposals, int) or isinstance(proposals, bool) or proposals < 1:
        raise ValueError(
            f"number of Marsaglia-Tsang proposals {proposals!r} must be a positive integer"
        )


def _unit_gamma(
    shape: torch.Tensor, draws: Draws, proposals: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, g - a) for g ~ Gamma(a, 1), a = ``shape`` broadcast to the draws (Marsaglia-Tsang)."""
    _check_proposals(proposals)
    z0 = draws.normal(0)
    # a keeps its own shape (often one value per step) and broadcasts in the arithmetic, so its checks
    # and d, c cost nothing per element; expand_as only checks that it broadcasts to the draws.
    a = torch.as_tensor(shape, dtype=torch.float64)
    a.expand_as(z0)
    if not torch.all(a > 0) or not torch.all(torch.isfinite(a)):
        raise ValueError(
            f"Gamma shape must be positive and finite, got values in "
            f"[{a.min().item()}, {a.max().item()}]"
        )
    boosted = a < 1
    d = torch.where(boosted, a + 1, a) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    v_minus_1 = torch.zeros_like(z0)  # the z = 0 fallback
    # The first proposal is tested everywhere; later ones only where none was accepted yet (a few
    # percent of the elements), gathered by flat index: the same elementwise operations on the same
    # values, so the draws are bitwise those of testing every element every time.
    pending = None
    for j in range(proposals):
        z = z0 if j == 0 else draws.normal(j)
        u = draws.uniform(j)
        if pending is None:
            v_minus_1, pending = _proposal(z, u, c, d, v_minus_1)
        else:
            at = torch.nonzero(pending.flatten()).squeeze(1)
            w_at, rejected = _proposal(*(t.broadcast_to(z.shape).reshape(-1)[at] for t in (z, u, c, d, v_minus_1)))
            v_minus_1.view(-1)[at] = w_at
            pending.view(-1)[at] = rejected
        if not pending.any():
            break
    g = d * (1.0 + v_minus_1)
    centred = d * v_minus_1 - 1.0 / 3.0  # d v - a for the unboosted shapes
    if boosted.any():
        boost = torch.exp(torch.log(draws.uniform(proposals)) / a)
        g = torch.where(boosted, g * boost, g)
        centred = torch.where(boosted, g - a, centred)
    return g, centred


def _proposal(
    z: torch.Tensor, u: torch.Tensor, c: torch.Tensor, d: torch.Tensor, v_minus_1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Marsaglia-Tsang proposal v = (1 + c z)^3: (v - 1 where accepted else ``v_minus_1``, rejected)."""
    cz = c * z
    w = cz * (3.0 + cz * (3.0 + cz))  # v - 1 = (1 + cz)^3 - 1 without cancellation
    valid = w > -1.0
    log_ratio = 0.5 * z**2 + d * (torch.log1p(torch.where(valid, w, 0.0)) - w)
    take = valid & (torch.log(u) < log_ratio)
    return torch.where(take, w, v_minus_1), ~take


def centred_gamma(
    k: torch.Tensor | float,
    theta: torch.Tensor | float,
    draws: Draws,
    *,
    proposals: int = DEFAULT_PROPOSALS,
) -> torch.Tensor:
    """g - k theta, g ~ Gamma(k, theta) (shape k, scale theta), one value per drawn element."""
    return _scale(theta) * _unit_gamma(torch.as_tensor(k, dtype=torch.float64), draws, proposals)[1]


def _scale(theta: torch.Tensor | float) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if not torch.all(theta > 0):
        raise ValueError(f"Gamma scale theta must be positive, got minimum {theta.min().item()}")
    return theta


# ---------------------------------------------------------------------------------------------
# Gamma forward process


class GammaProcess:
    """The DDGM forward process on a discrete schedule: k_n, theta_n, kbar_n (Sec. 3.2, Lemma 1)."""

    def __init__(
        self,
        schedule: DiscreteSchedule,
        theta_0: float = DEFAULT_THETA_0,
        k_convention: str = "code",
    ):
        if k_convention not in K_CONVENTIONS:
            raise ValueError(
                f"DDGM k_convention {k_convention!r} is not one of {list(K_CONVENTIONS)}"
            )
        if not (isinstance(theta_0, (int, float)) and math.isfinite(theta_0) and theta_0 > 0):
            raise ValueError(f"DDGM theta_0={theta_0!r} must be a positive finite number")
        self.schedule = schedule
        self.theta_0 = float(theta_0)
        self.k_convention = k_convention
        self.alpha_bars = schedule.alpha_bars
        denominator = self.alpha_bars if k_convention == "code" else schedule.alphas
        self.k = schedule.betas / (denominator * self.theta_0**2)
        self.theta = torch.sqrt(self.alpha_bars) * self.theta_0
        self.k_bar = torch.cumsum(self.k, dim=0)

    def centred_noise(
        self, n: torch.Tensor | int, draws: Draws, *, proposals: int = DEFAULT_PROPOSALS
    ) -> torch.Tensor:
        """gbar_n - kbar_n theta_n, gbar_n ~ Gamma(kbar_n, theta_n) (Lemma 1); n int or [B, 1..]."""
        return centred_gamma(self.k_bar[n], self.theta[n], draws, proposals=proposals)

    def q_sample(
        self, x0: torch.Tensor, n: torch.Tensor | int, centred: torch.Tensor
    ) -> torch.Tensor:
        """x_n = sqrt(abar_n) x_0 + (gbar_n - kbar_n theta_n) (DDGM Lemma 1)."""
        return torch.sqrt(self.alpha_bars[n]) * x0 + centred

    def eps_target(self, n: torch.Tensor | int, centred: torch.Tensor) -> torch.Tensor:
        """(gbar_n - kbar_n theta_n) / sqrt(1 - abar_n), what eps_theta(x_n, n) learns (Lemma 2)."""
        return centred / torch.sqrt(1.0 - self.alpha_bars[n])

    def normalised_noise(
        self, n: int, draws: Draws, *, proposals: int = DEFAULT_PROPOSALS
    ) -> torch.Tensor:
        """(gbar_n - kbar_n theta_n) / sqrt(1 - abar_n), the noise of Alg. 4 (mean 0, var. 1)."""
        return self.eps_target(n, self.centred_noise(n, draws, proposals=proposals))


# ---------------------------------------------------------------------------------------------
# Two-Gaussian mixture noise


def mixture_components(phi2: float | torch.Tensor, p: float = 0.5) -> tuple[float, float] | tuple[torch.Tensor, ...]:
    """(mu_1, mu_2) giving p N(mu_1, phi^2) + (1 - p) N(mu_2, phi^2) zero mean and unit variance.

    ``phi2`` a number gives numbers, a tensor (e.g. one variance per sample's step) tensors of its shape.
    """
    if isinstance(phi2, torch.Tensor):
        if phi2.numel() == 0 or not bool(torch.all((phi2 > 0.0) & (phi2 <= 1.0))):
            raise ValueError(f"mixture component variances phi2 must lie in (0, 1], got {phi2.flatten()[:8].tolist()}")
    elif not (isinstance(phi2, (int, float)) and 0.0 < phi2 <= 1.0):
        raise ValueError(f"mixture component variance phi2={phi2!r} must lie in (0, 1]")
    if not (isinstance(p, (int, float)) and 0.0 < p < 1.0):
        raise ValueError(f"mixture weight p={p!r} must lie in (0, 1)")
    if isinstance(phi2, torch.Tensor):
        mu_1 = torch.sqrt((1.0 - phi2.to(torch.float64)) * (1.0 - p) / p)
    else:
        mu_1 = math.sqrt((1.0 - phi2) * (1.0 - p) / p)
    return mu_1, -p * mu_1 / (1.0 - p)


def mixture_noise(draws: Draws, *, phi2: float | torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """eps ~ p N(mu_1, phi^2) + (1 - p) N(mu_2, phi^2), from ``uniform(0)`` and ``normal(0)``.

    A tensor ``phi2`` broadcasts against the draws: each element gets the variance at its place.
    """
    mu_1, mu_2 = mixture_components(phi2, p)
    first = (draws.uniform(0) < p).to(torch.float64)
    phi = torch.sqrt(phi2.to(torch.float64)) if isinstance(phi2, torch.Tensor) else math.sqrt(phi2)
    return mu_2 + (mu_1 - mu_2) * first + phi * draws.normal(0)


def mixture_phi2_schedule(T: int, phi2: float, phi2_end: float | None = None) -> torch.Tensor:
    """phi_n^2 [T], phi_n linear in n from sqrt(phi2) (n = 0) to sqrt(phi2_end) (n = T - 1); constant without an end."""
    mixture_components(phi2)
    if phi2_end is None:
        return torch.full((T,), float(phi2), dtype=torch.float64)
    if not (isinstance(phi2_end, (int, float)) and 0.0 < phi2_end <= 1.0):
        raise ValueError(f"mixture component variance phi2_end={phi2_end!r} must lie in (0, 1]")
    # leosegre/Gamma-Diffusion-Domain-Adaptation runners/diffusion.py L227-228: sigma =
    # torch.linspace(sigma_start, sigma_end, steps=num_timesteps), each component's standard deviation
    # at step t (functions/losses.py L134-139: y_i = randn * sigma_t + m_i_t).
    return torch.linspace(math.sqrt(phi2), math.sqrt(phi2_end), T, dtype=torch.float64) ** 2


def mixture_q_sample(
    schedule: DiscreteSchedule, x0: torch.Tensor, n: torch.Tensor | int, eps: torch.Tensor
) -> torch.Tensor:
    """x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps, eps mixture noise (the defining marginal)."""
    abar = schedule.alpha_bars[n]
    return torch.sqrt(abar) * x0 + torch.sqrt(1.0 - abar) * eps


# ---------------------------------------------------------------------------------------------
# Initial latents


def initial_latent(
    noise_source: NoiseSource,
    schedule: DiscreteSchedule,
    theta_0: float = DEFAULT_THETA_0,
    *,
    k_convention: str = "code",
    step: int | None = None,
    proposals: int = DEFAULT_PROPOSALS,
) -> torch.Tensor:
    """x_T = gbar_T - kbar_T theta_T, gbar_T ~ Gamma(kbar_T, theta_T) (Alg. 4), T = ``step``."""
    step = schedule.T - 1 if step is None else step
    if not (isinstance(step, int) and 0 <= step < schedule.T):
        raise ValueError(
            f"initial-latent step {step!r} must be an integer in [0, {schedule.T - 1}]"
        )
    process = GammaProcess(schedule, theta_0, k_convention)
    x = process.centred_noise(step, LatentDraws(noise_source), proposals=proposals)
    return x.to(noise_source.dtype)


def mixture_initial_latent(
    noise_source: NoiseSource, *, phi2: float, p: float = 0.5
) -> torch.Tensor:
    """x_T ~ p N(mu_1, phi^2) + (1 - p) N(mu_2, phi^2), the mixture noise itself (unit variance)."""
    return mixture_noise(LatentDraws(noise_source), phi2=phi2, p=p).to(noise_source.dtype)
