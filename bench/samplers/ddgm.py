"""DDGM samplers: Gamma noise (Nachmani et al. 2021, Alg. 4 and the code's DDIM-type
`generalized_gamma`) and two-Gaussian mixture noise (arXiv:2106.07582), with their initial latents.

Every sampler visits ``grid`` (ascending 0-based steps of the full chain) from the top down; the
fresh noise of the move t -> s is drawn for the target step s, as in the authors' code (noise
index ``j`` = next step): z = (gbar_s - kbar_s theta_s) / sqrt(1 - abar_s), zero mean and unit
variance in the code convention. The last move returns the x0 prediction, no noise (Alg. 4:
z = 0 at t = 1). Alg. 4 as printed divides by sqrt(1 - abar_t) (a variance (1 - abar_s) /
(1 - abar_t) < 1); the code's sqrt(1 - abar_s) is kept, the one that makes z unit-variance.

x_T: ``bench.methods.ddgm.initial_latent`` (Gamma) or ``mixture_initial_latent``, which the DAG reaches
through ``DDGMDenoiser.prior``. ``ddgm`` and ``ddgm_ddim`` take the noise law from the denoiser, the
law the model was trained with.
"""

from __future__ import annotations

import torch

from bench.core.noise import NoiseSource
from bench.core.options import NonNegative
from bench.methods.ddgm import (
    DEFAULT_PROPOSALS,
    GammaProcess,
    StepDraws,
    mixture_components,
    mixture_noise,
    mixture_phi2_schedule,
)
from bench.samplers.ddim import generalized
from bench.samplers.ddpm import NoiseAt, Variance, ancestral
from bench.samplers.spec import SamplerSpec


def gamma_noise_at(denoiser, noise: NoiseSource, theta_0, k_convention, proposals) -> NoiseAt:
    process = GammaProcess(denoiser.schedule, theta_0, k_convention)

    def noise_at(k: int, s: int) -> torch.Tensor:
        return process.normalised_noise(s, StepDraws(noise, k), proposals=proposals)

    return noise_at


def mixture_noise_at(denoiser, noise: NoiseSource, phi2: float, p: float, phi2_end: float | None) -> NoiseAt:
    """The mixture noise of target step s, its components' variance phi_s^2 (constant without ``phi2_end``)."""
    mixture_components(phi2, p)  # fail before the first network call
    phi2_at = mixture_phi2_schedule(denoiser.schedule.T, phi2, phi2_end).tolist() if phi2_end is not None else None

    def noise_at(k: int, s: int) -> torch.Tensor:
        return mixture_noise(StepDraws(noise, k), phi2=phi2 if phi2_at is None else phi2_at[s], p=p)

    return noise_at


def law_noise_at(denoiser, noise: NoiseSource) -> NoiseAt:
    law = getattr(denoiser, "noise_law", None)
    if law is None:
        raise ValueError(
            f"DDGM samplers need a denoiser of family 'ddgm' (one with a noise law), got "
            f"{type(denoiser).__name__}"
        )
    if law.kind == "gamma":
        return gamma_noise_at(denoiser, noise, law.theta_0, law.k_t, DEFAULT_PROPOSALS)
    return mixture_noise_at(denoiser, noise, law.phi2, law.p, law.phi2_end)


def ddgm(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    variance: Variance = "beta",
    clip_x0: bool = True,
) -> torch.Tensor:
    """DDGM Alg. 4 with the denoiser's own noise law (Gamma, or the two-Gaussian mixture)."""
    return ancestral(denoiser, x_T, grid, law_noise_at(denoiser, noise), variance, clip_x0)


def ddgm_ddim(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    eta: NonNegative = 0.0,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM Eq. 12 with sigma(eta), z the denoiser's own normalised noise (code: generalized_gamma)."""
    return generalized(denoiser, x_T, grid, law_noise_at(denoiser, noise), eta, clip_x0)


SPECS = (
    SamplerSpec("ddgm", ddgm, "ddgm", lambda K, o: K),
    SamplerSpec("ddgm_ddim", ddgm_ddim, "ddgm", lambda K, o: K),
)
