"""The sampler's own error: each sampler run on a Gaussian mixture's exact eps (no network), by K.

The mixture's every noised marginal is a mixture again, so eps*(x_n, n) = -sqrt(1 - abar_n) grad log
q_n(x_n) is exact (bench.data.gaussian_mixture). What is left between the samples and the mixture is
the sampler's discretisation (and Monte Carlo) error. It is measured by the energy distance
(Szekely & Rizzo 2013) to a large exact sample, 2 E|X - Y| - E|X - X'| - E|Y - Y'|, which is zero only
when both laws agree; its U-statistic form is unbiased, so an exact sampler scores 0 up to noise.
Analytic-DPM's Gamma_n = E||eps*(x_n)||^2 / d is Rao-Blackwellised: with x_n = s x0 + sigma eps,
Gamma_n = 1 - (s^2 / sigma^2) E tr Cov(x0 | x_n) / d, the posterior covariance closed-form for a
mixture, so only the outer mean over exact draws of x_n is Monte Carlo and Gamma_n stays below 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.spatial
import torch

from bench.config import ORACLE_METRIC, ORACLE_MODEL
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import MOMENT_GRIDS
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.runtime.io import atomic_json
from bench.steps.sample import generate

DATASET = "gmm2d"
# Clipping x0 to the pixel range has no meaning for an unbounded mixture: the oracle runs every sampler
# without it (the samplers' other options, Analytic-DPM's variance bounds included, stay as configured).
NO_CLIPPING = {"clip_x0": False}
_CHUNK = 1024


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(a), _CHUNK):
        total += float(scipy.spatial.distance.cdist(a[start : start + _CHUNK], b).sum())
    return total / (len(a) * len(b))


def _mean_distance_within(a: np.ndarray) -> float:
    """Mean |a_i - a_j| over i != j (the zero diagonal is left out of the count)."""
    n = len(a)
    return _mean_distance(a, a) * n / (n - 1)


def energy_distance(x: np.ndarray, y: np.ndarray, y_within: float | None = None) -> float:
    """U-statistic of 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013, Eq. 2.2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    within_y = _mean_distance_within(y) if y_within is None else y_within
    return 2 * _mean_distance(x, y) - _mean_distance_within(x) - within_y


def posterior_trace(mix: GaussianMixture, x: torch.Tensor, scale: torch.Tensor,
                    noise_var: torch.Tensor) -> torch.Tensor:
    """tr Cov(x0 | x_n = x) for x_n = scale x0 + sqrt(noise_var) eps: per component C_k' = (C_k^-1 + s^2/v I)^-1,
    m_k' = C_k' (C_k^-1 m_k + s/v x), mixed by the responsibilities of the noised mixture."""
    eye = torch.eye(mix.dim, dtype=torch.float64)
    prec = torch.linalg.inv(mix.covs)
    post_cov = torch.linalg.inv(prec + scale**2 / noise_var * eye)
    post_mean = torch.einsum("kij,nkj->nki", post_cov,
                             (prec @ mix.means[:, :, None])[None, :, :, 0] + (scale / noise_var) * x[:, None, :])
    comps = torch.distributions.MultivariateNormal(scale * mix.means, covariance_matrix=scale**2 * mix.covs
                                                   + noise_var * eye, validate_args=False)
    r = torch.softmax(comps.log_prob(x[:, None, :]) + torch.log(mix.weights), dim=1)
    within = r @ torch.diagonal(post_cov, dim1=1, dim2=2).sum(-1)
    mean = torch.einsum("nk,nki->ni", r, post_mean)
    return within + torch.einsum("nk,nk->n", r, post_mean.pow(2).sum(-1)) - mean.pow(2).sum(-1)


def exact_gamma(mix: GaussianMixture, alpha_bars: torch.Tensor, n_draws: int,
                generator: torch.Generator) -> torch.Tensor:
    """Gamma_n (Bao et al. 2022, Eq. 8 in eps form) of the exact eps, [T], Rao-Blackwellised as in the module note."""
    gamma = torch.empty(len(alpha_bars), dtype=torch.float64)
    x0 = mix.sample(n_draws, generator)
    for n, abar in enumerate(alpha_bars.to(torch.float64)):
        scale, noise_var = torch.sqrt(abar), 1.0 - abar
        x = scale * x0 + torch.sqrt(noise_var) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        gamma[n] = 1.0 - abar / noise_var * posterior_trace(mix, x, scale, noise_var).mean() / mix.dim
    return gamma


def _sampler_options(sampler: dict[str, Any], gamma: torch.Tensor) -> dict[str, Any]:
    options = {**sampler.get("options", {})}
    options.update({k: v for k, v in NO_CLIPPING.items() if k in options})
    if sampler.get("inputs", {}).get("gamma") == "moments":
        options["gamma"] = gamma
    return {**sampler, "options": options}


def oracle_table(spec: dict[str, Any]) -> dict[str, Any]:
    """Energy distance of every (sampler, K) of spec['cells'] on the spec's mixture; a JSON-ready record."""
    # torch.distributions' argument checks cost more than the mixture's score itself;
    # a non-finite input still gives a non-finite eps, which stops generate with the step and sample.
    validating = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        return _oracle_table(spec)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validating)


def run(spec: dict[str, Any], out: Path) -> None:
    """The oracle step: the oracle table's record, written to ``out``."""
    atomic_json(oracle_table(spec), out)


def _oracle_table(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    mix_spec = spec["mixture"]
    mix = GaussianMixture.random(mix_spec["components"], mix_spec["dim"], seed=mix_spec["seed"])
    schedule = DiscreteSchedule.named(spec["schedule"], spec["T"])
    shape = (mix.dim,)
    network = ExactEpsNetwork(mix, schedule, shape)
    start = time.perf_counter()
    gamma = exact_gamma(mix, schedule.alpha_bars, spec["gamma_samples"],
                        torch.Generator().manual_seed(spec["seed"] + 1))
    reference = mix.sample(spec["reference_samples"], torch.Generator().manual_seed(spec["seed"] + 2)).numpy()
    reference_within = _mean_distance_within(reference)
    setup_seconds = time.perf_counter() - start
    seeds = torch.arange(spec["seed"], spec["seed"] + spec["n_samples"])
    rows = []
    for cell in spec["cells"]:
        sampler = _sampler_options(cell["sampler_config"], gamma)
        # A fresh denoiser per cell: its call count, over one batch, is the cell's NFE.
        counted = DiscreteEpsDenoiser(network, schedule)
        began = time.perf_counter()
        x, _ = generate(counted, sampler, cell["K"], seeds, shape, batch_size=spec["n_samples"],
                        context=f"oracle {cell['sampler']} K={cell['K']}",
                        gamma=gamma if sampler["grid"] in MOMENT_GRIDS else None, state_dtype=torch.float64)
        wall = time.perf_counter() - began
        rows.append({
            "sampler": cell["sampler"], "K": cell["K"], "nfe": int(counted.nfe),
            "value": energy_distance(x.reshape(len(x), -1).numpy(), reference, reference_within),
            "wall_seconds": round(wall, 3),
        })
    return {
        "metric": ORACLE_METRIC, "dataset": DATASET, "model": ORACLE_MODEL,
        "mixture": mix_spec, "schedule": spec["schedule"], "T": spec["T"], "n_samples": spec["n_samples"],
        "reference_samples": spec["reference_samples"], "gamma_samples": spec["gamma_samples"],
        "seed": spec["seed"], "overrides": NO_CLIPPING, "setup_wall_seconds": round(setup_seconds, 3),
        "cells": rows,
    }
