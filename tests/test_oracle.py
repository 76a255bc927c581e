"""The oracle table (bench.steps.oracle): exact Gamma_n, the energy distance against closed forms, a sampler's error by K."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from dag import ROOT

from bench.config import ConfigError, validate_config
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.analytic import estimate_gamma
from bench.steps.collect import oracle_rows
from bench.steps.oracle import energy_distance, exact_gamma, oracle_table


def test_exact_gamma_agrees_with_the_monte_carlo_mean_square_of_the_exact_eps(fast_distributions) -> None:
    mix = GaussianMixture.random(3, 2, seed=1)
    schedule = DiscreteSchedule.named("linear", 1000)
    gamma = exact_gamma(mix, schedule.alpha_bars, 4000, torch.Generator().manual_seed(0))
    assert bool((gamma < 1).all()) and bool((gamma > 0).all())
    steps = [0, 100, 300]
    denoiser = DiscreteEpsDenoiser(ExactEpsNetwork(mix, schedule, (2,)), schedule)
    x0 = mix.sample(20000, torch.Generator().manual_seed(3))
    mc = estimate_gamma(denoiser, x0, steps, torch.arange(20000), batch_size=20000)
    # 20000 draws: the Monte Carlo mean square of ||eps||^2 / 2 has a standard error below 0.01.
    assert gamma[steps].numpy() == pytest.approx(mc[steps].numpy(), abs=0.01)


def _mean_abs_normal(mu: float, var: float) -> float:
    """E|Z| for Z ~ N(mu, var)."""
    s = math.sqrt(var)
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * var)) + mu * math.erf(mu / (s * math.sqrt(2)))


def test_energy_distance_of_shifted_normals_matches_its_closed_form() -> None:
    rng = np.random.default_rng(0)
    delta = 1.0
    x = rng.standard_normal((4000, 1)) + delta
    y = rng.standard_normal((8000, 1))
    exact = 2 * _mean_abs_normal(delta, 2.0) - 2 * _mean_abs_normal(0.0, 2.0)  # 0.542
    assert energy_distance(x, y) == pytest.approx(exact, abs=0.04)
    # Same law: the U-statistic is unbiased, so it sits at 0 within its noise.
    assert abs(energy_distance(rng.standard_normal((4000, 1)), y)) < 0.02


SAMPLERS = {
    "ddim_eta0": {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0, "clip_x0": True}},
    "analytic_ddpm": {"fn": "analytic_ddpm", "grid": "even", "inputs": {"gamma": "moments"},
                      "options": {"clip": True, "clip_x0": True, "sigma2_clip_pixel": 1, "pixel_quantum": 0.125}},
}


def test_oracle_error_shrinks_with_k_and_rows_reach_metrics_csv(fast_distributions) -> None:
    spec = {"mixture": {"components": 3, "dim": 2, "seed": 1}, "schedule": "linear", "T": 1000, "n_samples": 1000,
            "reference_samples": 3000, "gamma_samples": 500, "seed": 0,
            "cells": [{"sampler": s, "K": K, "sampler_config": c} for s, c in SAMPLERS.items() for K in (5, 200)]}
    record = oracle_table(spec)
    value = {(c["sampler"], c["K"]): c["value"] for c in record["cells"]}
    for sampler in SAMPLERS:
        assert value[(sampler, 5)] > 0.005 > value[(sampler, 200)], value
    assert [c["nfe"] for c in record["cells"]] == [5, 200, 5, 200]
    labels = {s: {"label": s.upper(), "grid": c["grid"]} for s, c in SAMPLERS.items()}
    rows = oracle_rows(record, labels)
    assert {(r["model"], r["metric"], r["dataset"]) for r in rows} == {("oracle", "oracle_energy", "gmm2d")}
    assert [(r["sampler"], r["K"], r["value"]) for r in rows] == [
        (c["sampler"], c["K"], c["value"]) for c in record["cells"]]


def test_the_oracle_job_counts_as_a_metrics_stage(tmp_path) -> None:
    from bench.runtime.stage_times import stage_times

    (tmp_path / "oracle").mkdir()
    (tmp_path / "oracle" / "oracle.tsv").write_text("s\th:m:s\n135.5\t0:02:15\n")
    metrics = {row.stage: row for row in stage_times(tmp_path)}["metrics"]
    assert (metrics.jobs, metrics.seconds) == (1, 135.5)


def test_an_oracle_table_needs_the_oracle_config() -> None:
    cfg = yaml.safe_load((ROOT / "workflows/config/default.yaml").read_text())
    del cfg["oracle"]
    with pytest.raises(ConfigError, match="embedded_oracle.yaml: metric 'oracle_energy' needs the config key 'oracle'"):
        validate_config(cfg, root=ROOT)
