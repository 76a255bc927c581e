"""Cells that another cell computes: the optimal trajectory at K = T is the even one, so their samples are shared."""

import copy
from pathlib import Path

import pytest
import torch

from bench.config import Cell, load_config
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import even_grid, model_free_grid, time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.analytic_trajectory import optimal_trajectory
from bench.report.image_grids import SampleGrid, shared_sample_grids
from bench.steps.sample import generate
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = load_config(ROOT / "workflows/config/default.yaml", root=ROOT, check_paths=False)


def test_optimal_trajectory_at_K_equal_T_is_the_full_chain_and_at_K_below_T_is_unknown():
    T = 50
    abar = DiscreteSchedule.named("linear", T).alpha_bars
    gamma = torch.rand(T, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.9
    full = torch.arange(T)
    assert torch.equal(optimal_trajectory(abar, gamma, T), full)
    assert torch.equal(model_free_grid("optimal", T, T), full)
    assert torch.equal(even_grid(T, T), full)
    assert model_free_grid("optimal", T, T - 1) is None
    assert torch.equal(model_free_grid("quad", 1000, 100), time_grid("quad", 1000, 100))
    with pytest.raises(ValueError, match=r"K=51 must be an integer in \[1, T=50\]"):
        model_free_grid("optimal", T, T + 1)


@pytest.mark.parametrize("fn", ["analytic_ddpm", "analytic_ddim"])
def test_samples_on_the_optimal_and_the_even_grid_at_K_equal_T_are_bitwise_equal(fn):
    sched = DiscreteSchedule.named("linear", 200)
    gauss = GaussianMixture.random(2, 3, seed=4)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(gauss, sched, (3,)), sched)
    gamma = torch.rand(200, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.9
    runs = {}
    for grid in ("optimal", "even"):
        sampler = {"fn": fn, "grid": grid, "options": {"gamma": gamma}}
        runs[grid] = generate(den, sampler, 200, torch.arange(6), (3,), batch_size=6, gamma=gamma)
    (x_ot, grid_ot), (x_even, grid_even) = runs["optimal"], runs["even"]
    assert torch.equal(grid_ot, grid_even) and torch.equal(x_ot, x_even)


def test_default_run_computes_the_two_ot_cells_at_K_1000_as_the_even_ones():
    assert shared_cells(DEFAULT) == {
        Cell("mlp", "analytic_ddpm_ot", 1000): Cell("mlp", "analytic_ddpm", 1000),
        Cell("mlp", "analytic_ddim_ot", 1000): Cell("mlp", "analytic_ddim", 1000),
    }


def test_a_sampler_that_differs_in_more_than_its_grid_or_name_shares_nothing():
    cfg = copy.deepcopy(DEFAULT)
    cfg["samplers"]["analytic_ddpm_ot"]["options"]["clip"] = False
    cfg["samplers"]["analytic_ddim_ot"]["label"] = "renamed"  # a name only: still shared
    assert shared_cells(cfg) == {Cell("mlp", "analytic_ddim_ot", 1000): Cell("mlp", "analytic_ddim", 1000)}


def test_no_twin_in_the_run_means_the_cell_is_computed():
    cfg = copy.deepcopy(DEFAULT)
    for exp in cfg["experiments"]:
        if exp["model"] == "mlp" and "analytic_ddpm" in exp["samplers"]:
            exp["K"] = [k for k in exp["K"] if k != 1000]
    assert shared_cells(cfg) == {}


def test_report_shows_a_shared_cell_with_its_computing_cells_samples():
    grid = SampleGrid(key=("digits", "mlp", "analytic_ddpm", 1000), relpath="samples/digits/mlp/analytic_ddpm/K1000.png",
                      shard="shard0000.npz", n_images=64, first_seed=0, last_seed=63)
    grids = {grid.key: grid}
    shared = {"mlp/analytic_ddpm_ot/K1000": "mlp/analytic_ddpm/K1000", "mlp/analytic_ddim_ot/K1000": "mlp/other/K1000"}
    # the second source has no grid (a failed cell): nothing to show for its shared cell either
    assert shared_sample_grids(grids, shared) == {("digits", "mlp", "analytic_ddpm_ot", 1000): grid}
