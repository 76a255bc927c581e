"""DDIM's quadratic grid with its repeated timesteps, run as DDIM's zero-length steps.

Facts (ermongroup/ddim): runners/diffusion.py sample_image builds, for skip_type "quad",
``seq = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), K) ** 2]`` with no deduplication;
functions/denoising.py generalized_steps / ddpm_steps call the model once per entry of seq and, for a
repeated pair (t, next_t = t), have c1 = eta * sqrt(0 * ...) = 0 and x_next = x up to rounding
(ddpm_steps: beta_t = 0, mean = x, exp(0.5 log 0) = 0).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ConfigError, read_yaml, validate_config
from bench.core import time_grids as grids
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import REPEATING_GRIDS, has_repeats, quad_grid, time_grid
from bench.metrics.nll import vlb_bits_per_dim
from bench.samplers import ddim, ddpm

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)


def ddim_formula(T: int, K: int) -> list[int]:
    """ermongroup/ddim's quad seq, written with numpy as its runner does."""
    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), K) ** 2)]


@pytest.mark.parametrize(("K", "distinct"), [(10, 10), (20, 20), (50, 49), (100, 96), (1000, 688)])
def test_quad_grid_is_ddims_formula_with_its_repeats(K, distinct):
    grid = time_grid("quad", 1000, K)
    assert grid.tolist() == ddim_formula(1000, K)
    assert len(grid) == K
    assert len(set(grid.tolist())) == distinct
    assert has_repeats(grid) == (distinct < K)


def test_quad_grid_matches_numpy_at_every_K():
    # torch.linspace rounds some points differently from numpy (K = 16, 21, ... at T = 1000), which int() of the
    # square turns into another timestep; the grid follows numpy's values exactly.
    for T in (1000, 4000):
        for K in range(1, T + 1, 1 if T == 1000 else 7):
            assert quad_grid(T, K).tolist() == ddim_formula(T, K), (T, K)


def test_only_the_quad_grid_keeps_repeats(monkeypatch):
    assert REPEATING_GRIDS == ("quad",)
    monkeypatch.setattr(grids, "even_grid", lambda T, K: torch.tensor([0, 0, 5, 9]))
    with pytest.raises(ValueError, match=r"time grid 'even' with T=10, K=4 has repeated timesteps: \[0, 0, 5, 9\]"):
        time_grid("even", 10, 4)
    monkeypatch.setattr(grids, "quad_grid", lambda T, K: torch.tensor([0, 5, 3, 9]))
    with pytest.raises(ValueError, match=r"time grid 'quad' with T=10, K=4 is not ascending"):
        time_grid("quad", 10, 4)


class _Net(nn.Module):
    """A fixed smooth eps-predictor of (x, t), so that the result of each step depends on x and t."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.w * x + 1e-3 * t.reshape(-1, 1, 1, 1))


class _Recorder(DiscreteEpsDenoiser):
    """Records (timestep, x) of every network call."""

    def __init__(self) -> None:
        super().__init__(_Net().double(), DiscreteSchedule.named("linear", 1000))
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x, n):
        self.calls.append((n, x.clone()))
        return super().__call__(x, n)


def _run(fn, grid, **options):
    denoiser = _Recorder()
    noise = NoiseSource(torch.arange(3), SHAPE, torch.float64, "cpu")
    x = fn(denoiser, noise.latent(), grid, noise=noise, **options)
    return x, denoiser


@pytest.mark.parametrize(
    ("fn", "options"),
    [
        (ddim.sample, {"eta": 0.0}),
        (ddim.sample, {"eta": 0.5}),
        (ddim.sample, {"eta": 1.0, "clip_x0": True}),
        (ddpm.sample, {"variance": "beta"}),
        (ddpm.sample, {"variance": "beta_tilde"}),
    ],
)
def test_a_zero_length_step_calls_the_network_and_leaves_x_unchanged(fn, options):
    grid = time_grid("quad", 1000, 50)  # 0, 0, 1, 3, ...
    x, denoiser = _run(fn, grid, **options)
    assert denoiser.nfe == len(grid) == 50
    assert [n for n, _ in denoiser.calls] == grid.flip(0).tolist()
    # the calls at the two copies of timestep 0 (the last two) see the same x, bit for bit
    (n1, x1), (n0, x0) = denoiser.calls[-2:]
    assert n1 == n0 == 0
    assert torch.equal(x1, x0)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("K", [50, 100, 1000])
def test_deterministic_ddim_on_the_repeating_grid_equals_it_without_repeats(K):
    # For eta = 0 a zero-length step changes nothing: only the NFE differs (DDIM reports K, not the distinct count).
    grid = time_grid("quad", 1000, K)
    distinct = torch.unique_consecutive(grid)
    x_rep, d_rep = _run(ddim.sample, grid, eta=0.0)
    x_uniq, d_uniq = _run(ddim.sample, distinct, eta=0.0)
    assert torch.equal(x_rep, x_uniq)
    assert (d_rep.nfe, d_uniq.nfe) == (K, len(distinct))


def test_the_variational_bound_refuses_a_repeating_grid():
    denoiser = _Recorder()
    x0 = torch.zeros(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly ascending timesteps"):
        vlb_bits_per_dim(denoiser, x0, time_grid("quad", 1000, 50), torch.arange(2), max_level=16)


@pytest.fixture
def cfg():
    c = read_yaml(ROOT / "workflows/config/default.yaml")
    c["tables"] = []
    return c


def _with_quad(cfg, sampler: str, K: int, **extra):
    c = copy.deepcopy(cfg)
    c["samplers"][sampler] = {**c["samplers"][sampler], "grid": "quad", **extra}
    c["experiments"] = [{"model": "mlp", "samplers": [sampler], "K": [K]}]
    return c


def test_config_accepts_ddim_and_ddpm_on_the_repeating_quad_grid(cfg):
    validate_config(_with_quad(cfg, "ddim_eta0", 50), root=ROOT)
    c = _with_quad(cfg, "ddpm_beta", 1000)
    c["samplers"]["ddpm_beta"].pop("nll", None)
    validate_config(c, root=ROOT)


def test_config_refuses_other_samplers_and_bounds_on_repeats(cfg):
    with pytest.raises(ConfigError, match=r"time grid 'quad' repeats timesteps at T=1000, K=50, which only "
                                          r"\['ddim', 'ddpm'\] run .* not 'analytic_ddpm'"):
        validate_config(_with_quad(cfg, "analytic_ddpm", 50), root=ROOT)
    c = _with_quad(cfg, "ddpm_beta", 100)
    assert "nll" in c["samplers"]["ddpm_beta"]
    with pytest.raises(ConfigError, match=r"K=100; the variational bound \(nll: beta\) has no term for a zero-length"):
        validate_config(c, root=ROOT)
    # without repeats (K = 20) every sampler may use the quad grid
    validate_config(_with_quad(cfg, "analytic_ddpm", 20), root=ROOT)
