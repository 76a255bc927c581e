"""DDGM (Nachmani, San Roman, Wolf): an eps network trained with L1 on Gamma or two-Gaussian mixture noise.

A model of family ``ddgm`` names its law in ``noise:`` (``noise_law``); ``l1_objective`` trains it and
``DDGMDenoiser`` samples it, its ``prior`` giving x_T ~ q(x_{grid[-1]} | x_0 = 0) from the latent streams
of bench.methods.ddgm.LatentDraws, so that x_T depends only on the sample's seed. The noise laws
themselves, and why the ``code`` k_t convention is the default, are in bench.methods.ddgm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule
from bench.families.ddpm import DISCRETE_SCHEDULES
from bench.families.spec import FamilySpec
from bench.methods.ddgm import (
    DEFAULT_PROPOSALS,
    DEFAULT_THETA_0,
    K_CONVENTIONS,
    NOISE_KEYS,
    GammaProcess,
    GeneratorDraws,
    initial_latent,
    mixture_initial_latent,
    mixture_noise,
    mixture_phi2_schedule,
    mixture_q_sample,
)


def _steps_like(n: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return n.view(-1, *([1] * (x0.dim() - 1)))


def ddgm_loss(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    gen: torch.Generator,
    *,
    theta_0: float = DEFAULT_THETA_0,
    k_convention: str = "code",
    proposals: int = DEFAULT_PROPOSALS,
) -> torch.Tensor:
    """E |(gbar_n - kbar_n theta_n) / sqrt(1 - abar_n) - eps_theta(x_n, n)|, n uniform (Lemma 2)."""
    process = GammaProcess(schedule, theta_0, k_convention)
    n = torch.randint(0, schedule.T, (x0.shape[0],), generator=gen)
    nb = _steps_like(n, x0)
    centred = process.centred_noise(nb, GeneratorDraws(gen, tuple(x0.shape)), proposals=proposals)
    xt = process.q_sample(x0.to(torch.float64), nb, centred).to(x0.dtype)
    target = process.eps_target(nb, centred).to(x0.dtype)
    return (net(xt, n.to(x0.dtype)) - target).abs().mean()


def mixture_loss(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    gen: torch.Generator,
    *,
    phi2: float,
    p: float = 0.5,
    phi2_end: float | None = None,
) -> torch.Tensor:
    """E |eps - eps_theta(sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps, n)|, eps mixture of variances phi_n^2, n uniform."""
    n = torch.randint(0, schedule.T, (x0.shape[0],), generator=gen)
    nb = _steps_like(n, x0)
    phi2_n = phi2 if phi2_end is None else mixture_phi2_schedule(schedule.T, phi2, phi2_end)[nb]
    eps = mixture_noise(GeneratorDraws(gen, tuple(x0.shape)), phi2=phi2_n, p=p)
    xt = mixture_q_sample(schedule, x0.to(torch.float64), nb, eps).to(x0.dtype)
    return (net(xt, n.to(x0.dtype)) - eps.to(x0.dtype)).abs().mean()


@dataclass(frozen=True)
class NoiseLaw:
    """The noise a DDGM model is trained and sampled with: Gamma (k_t, theta_0) or the mixture (phi2, phi2_end, p)."""

    kind: str
    k_t: str = "code"
    theta_0: float = DEFAULT_THETA_0
    phi2: float = 1.0
    p: float = 0.5
    phi2_end: float | None = None

    def phi2_at(self, schedule: DiscreteSchedule, n: int) -> float:
        """The mixture's component variance phi_n^2 at step n (``phi2`` itself for a constant law)."""
        if self.phi2_end is None:
            return self.phi2
        return float(mixture_phi2_schedule(schedule.T, self.phi2, self.phi2_end)[n])


def noise_law(cfg: dict) -> NoiseLaw:
    """The law of a model config's ``noise:`` entry, e.g. {kind: gamma, k_t: code}, checked."""
    kind = cfg.get("kind") if isinstance(cfg, dict) else None
    if kind not in NOISE_KEYS:
        raise ValueError(f"DDGM noise kind {kind!r} is not one of {list(NOISE_KEYS)} (noise entry {cfg!r})")
    extra = sorted(set(cfg) - set(NOISE_KEYS[kind]))
    if extra:
        raise ValueError(f"DDGM noise of kind {kind!r} takes keys {list(NOISE_KEYS[kind])}, not {extra}")
    if kind == "gamma":
        k_t = cfg.get("k_t", "code")
        if k_t not in K_CONVENTIONS:
            raise ValueError(f"DDGM Gamma noise k_t {k_t!r} is not one of {list(K_CONVENTIONS)}")
        return NoiseLaw(kind, k_t=k_t)
    if "phi2" not in cfg:
        raise ValueError("DDGM noise of kind 'gaussian_mixture' needs phi2, the variance of each component, in (0, 1]")
    phi2_end = cfg.get("phi2_end")
    mixture_phi2_schedule(1, cfg["phi2"], phi2_end)
    return NoiseLaw(kind, phi2=float(cfg["phi2"]), phi2_end=None if phi2_end is None else float(phi2_end))


def l1_objective(model_cfg: dict, max_level: int) -> Callable[..., torch.Tensor]:
    """The L1 objective of DDGM (Lemma 2) under the config's noise law: (net, schedule, x0, generator) -> loss."""
    law = noise_law(model_cfg.get("noise"))
    if law.kind == "gamma":
        return partial(ddgm_loss, theta_0=law.theta_0, k_convention=law.k_t)
    return partial(mixture_loss, phi2=law.phi2, p=law.p, phi2_end=law.phi2_end)


class DDGMDenoiser(DiscreteEpsDenoiser):
    """A DDGM eps network: x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n) under either law (Lemma 1)."""

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, law: NoiseLaw):
        super().__init__(net, schedule)
        self.noise_law = law

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """x_T ~ q(x_s | x_0 = 0), s = grid[-1]: centred Gamma(kbar_s, theta_s) (Alg. 4) or sqrt(1 - abar_s) eps."""
        step = int(grid[-1])
        law = self.noise_law
        if law.kind == "gamma":
            return initial_latent(noise, self.schedule, law.theta_0, k_convention=law.k_t, step=step)
        scale = torch.sqrt(1.0 - self.alpha_bars[step])
        phi2 = law.phi2_at(self.schedule, step)
        return (scale * mixture_initial_latent(noise, phi2=phi2, p=law.p)).to(noise.dtype)


def ddgm_denoiser(net: nn.Module, schedule: DiscreteSchedule, data_shape=None, noise=None) -> DDGMDenoiser:
    """The eps network with the noise law of the model's ``noise:`` entry, for the ddgm samplers and prior."""
    return DDGMDenoiser(net, schedule, noise_law(noise))


FAMILY = FamilySpec(
    name="ddgm",
    schedules=DISCRETE_SCHEDULES,
    losses={"l1": l1_objective},
    denoiser=ddgm_denoiser,
    # Its forward marginals are not Gaussian, so only its own samplers, which draw the law it was trained
    # with, apply: ddpm and ddim (eta > 0) would inject Gaussian noise, Analytic-DPM's variance and EDM's
    # sigma-space samplers (x_T ~ N(0, sigma_max^2)) assume Gaussian perturbations, iddpm needs a learned
    # variance; ddim with eta = 0 would be valid but equals ddgm_ddim with eta = 0.
    spaces=("ddgm",),
    noise_law=noise_law,
    noise_forms="{kind: gamma, k_t: code|paper} or {kind: gaussian_mixture, phi2: <(0, 1]>, phi2_end: <(0, 1]>}",
)
