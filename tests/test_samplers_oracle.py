"""DDPM and DDIM with the exact score of a Gaussian mixture reproduce the mixture (sampler error only)."""

import math

import pytest
import torch

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.samplers import ddim, ddpm

N = 4000
SHAPE = (2,)


@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    mix = GaussianMixture.random(3, 2, seed=1)
    sch = DiscreteSchedule.named("linear", 1000)
    return mix, DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, SHAPE), sch)


def moment_errors(x: torch.Tensor, mix: GaussianMixture) -> tuple[float, float]:
    """Largest |error| of the mean and covariance, each in units of its Monte-Carlo standard error."""
    mu, cov = mix.mean(), mix.cov()
    se_mu = torch.sqrt(torch.diag(cov) / len(x))
    se_cov = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / len(x))
    z_mu = ((x.mean(0) - mu).abs() / se_mu).max().item()
    z_cov = ((torch.cov(x.T) - cov).abs() / se_cov).max().item()
    return z_mu, z_cov


def run(sampler, den, K, grid_kind, **opts):
    noise = NoiseSource(torch.arange(N), SHAPE, torch.float64, "cpu")
    grid = time_grid(grid_kind, 1000, K)
    return sampler(den, noise.latent(), grid, noise=noise, **opts)


def test_ddim_converges_to_the_mixture_as_K_grows(oracle):
    mix, den = oracle
    # DDIM's discretisation bias shrinks with K (at K = 100 it is still about 4.8 standard errors in a
    # covariance entry of this mixture; at K = 1000 about 2.4).
    errs = {K: moment_errors(run(ddim.sample, den, K, "uniform", eta=0.0), mix) for K in (5, 100, 1000)}
    assert max(errs[1000]) < 4.5, errs
    assert max(errs[5]) > max(errs[100]) > max(errs[1000]), errs


def test_ddim_with_eta_one_matches_the_mixture(oracle):
    mix, den = oracle
    assert max(moment_errors(run(ddim.sample, den, 200, "uniform", eta=1.0), mix)) < 4.5


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_full_chain_matches_the_mixture(oracle, variance):
    mix, den = oracle
    x = run(ddpm.sample, den, 1000, "even", variance=variance, clip_x0=False)
    assert max(moment_errors(x, mix)) < 4.5


def test_ddim_deterministic_path_is_an_ode_flow(oracle):
    """eta = 0 with K = T on a single Gaussian maps N(0, I) latents to the data law exactly (to O(1/T))."""
    mix = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[0.2, -0.1]], dtype=torch.float64),
                          torch.tensor([[[0.09, 0.02], [0.02, 0.04]]], dtype=torch.float64))
    sch = DiscreteSchedule.named("linear", 1000)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, SHAPE), sch)
    x = run(ddim.sample, den, 1000, "even", eta=0.0)
    # For one Gaussian the DDIM ODE is linear: the sample covariance error is bounded by MC error.
    assert max(moment_errors(x, mix)) < 4.5
    assert math.isfinite(x.sum().item())


def test_bad_options_are_rejected(oracle):
    _, den = oracle
    with pytest.raises(ValueError, match="'huge' is not one of"):
        run(ddpm.sample, den, 10, "even", variance="huge")
    with pytest.raises(ValueError, match="eta=-1"):
        run(ddim.sample, den, 10, "even", eta=-1)
