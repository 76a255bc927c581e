"""EDM's general sampler (generate.py ablation_sampler): reductions, grids, convergence, NFE, options."""

import math

import pytest
import torch
from test_edm import MixtureDenoiser, exact_flow, latent_noise

from bench.core.sigma_grids import edm_sigma_grid, sigma_grid, sigma_range
from bench.data.gaussian_mixture import GaussianMixture
from bench.samplers.edm import euler, heun, stochastic
from bench.samplers.edm_general import edm_general, noise_schedule
from bench.samplers.validation import SamplerConfigError, check_grid_options, check_grid_range_sampler
from bench.steps.plan import nfe_per_sample
from bench.steps.sample import sampler_options

torch.set_num_threads(1)

# EDM Fig. 2: each baseline's "original sampler" and its ablations toward EDM's sampler.
COMBOS = [
    # (discretisation, schedule, scaling)
    ("vp", "vp", "vp"),  # VP (score-SDE's probability-flow ODE)
    ("ve", "ve", "none"),  # VE
    ("iddpm", "linear", "none"),  # iDDPM / DDIM
    ("edm", "vp", "vp"),
    ("edm", "ve", "none"),
    ("vp", "linear", "none"),
    ("ve", "linear", "none"),
    ("edm", "linear", "none"),
]


# ---------------------------------------------------------------------------------------------
# (a) Closed-form reductions to EDM's own samplers


@pytest.mark.parametrize("solver, edm_sampler", [("heun", heun), ("euler", euler)])
def test_edm_grid_linear_schedule_no_scaling_is_edm_sampler(solver, edm_sampler):
    mixture = GaussianMixture.random(3, 2, seed=1)
    noise = latent_noise(50, 2)
    grid = edm_sigma_grid(18)
    x_T = noise.latent() * grid[0]
    ours = edm_general(MixtureDenoiser(mixture), x_T, grid, noise=noise, solver=solver)
    torch.testing.assert_close(ours, edm_sampler(MixtureDenoiser(mixture), x_T, grid, noise=noise), rtol=0, atol=1e-12)


def test_churn_with_linear_schedule_is_edm_alg2():
    mixture = GaussianMixture.random(3, 2, seed=2)
    noise = latent_noise(50, 2)
    grid = edm_sigma_grid(12)
    x_T = noise.latent() * grid[0]
    churn = {"S_churn": 30.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}
    ours = edm_general(MixtureDenoiser(mixture), x_T, grid, noise=noise, **churn)
    theirs = stochastic(MixtureDenoiser(mixture), x_T, grid, noise=noise, **churn)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# (b) Each discretisation's sigma_i, computed here from generate.py's formulas (L102-119)


def _vp_sigma(t):
    # The default vp range is that of beta_d = 19.9, beta_min = 0.1, so the solved betas are those.
    return math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1)


def _iddpm_u(M=1000, C_1=0.001, C_2=0.008):
    # generate.py L111-114: alpha_bar of the integer tensor j is float32, the recursion float64.
    abar = [torch.sin(0.5 * math.pi * torch.tensor(j) / M / (C_2 + 1)) ** 2 for j in range(M + 1)]
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / float((abar[j - 1] / abar[j]).clamp(min=C_1)) - 1)
    return u


def _expected(kind, N):
    i = range(N)
    if kind == "vp":
        return [_vp_sigma(1 + k / (N - 1) * (1e-3 - 1)) for k in i]
    if kind == "ve":
        return [math.sqrt(100.0**2 * (0.02**2 / 100.0**2) ** (k / (N - 1))) for k in i]
    if kind == "iddpm":
        inside = [v for v in _iddpm_u() if 0.002 <= v <= 81.0]
        # Python's round is half to even, as torch.round in generate.py L116.
        return [inside[round((len(inside) - 1) / (N - 1) * k)] for k in i]
    return [(80.0 ** (1 / 7) + k / (N - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7 for k in i]


@pytest.mark.parametrize("kind", ["vp", "ve", "iddpm", "edm"])
@pytest.mark.parametrize("N", [2, 7, 18])
def test_each_discretisation_is_generate_py_formula(kind, N):
    grid = sigma_grid(kind, N)
    assert grid[-1].item() == 0.0 and grid.shape == (N + 1,)
    assert grid[:-1].tolist() == pytest.approx(_expected(kind, N), rel=1e-9)


@pytest.mark.parametrize("schedule", ["vp", "ve", "linear"])
def test_schedule_inverse_and_derivative(schedule):
    sigma, sigma_deriv, sigma_inv = noise_schedule(schedule, sigma_min=0.002, sigma_max=80.0, epsilon_s=1e-3)
    for s in (0.002, 0.5, 3.0, 80.0):
        assert sigma(sigma_inv(s)) == pytest.approx(s, rel=1e-12)
    for t in (0.01, 0.3, 0.9):
        h = 1e-6 * t
        assert sigma_deriv(t) == pytest.approx((sigma(t + h) - sigma(t - h)) / (2 * h), rel=1e-7)
    if schedule == "vp":
        # generate.py L99-100: sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max.
        assert (sigma(1e-3), sigma(1.0)) == pytest.approx((0.002, 80.0), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# (c) Convergence to the exact flow and to the data law as N grows


@pytest.mark.parametrize("solver, Ns, order", [("euler", (32, 128, 512), 1), ("heun", (8, 32, 128), 2)])
@pytest.mark.parametrize("disc, schedule, scaling", COMBOS)
def test_converges_to_the_exact_flow_of_gaussian_data(disc, schedule, scaling, solver, Ns, order):
    """Every (sigma(t), s(t)) is a reparametrisation of one probability-flow ODE: x_0 tends to its exact solution.

    sigma_min = 1e-4 makes the last (Euler) step's O(sigma_min^2) error negligible; iDDPM's levels end
    at u_999 = 0.006, which the largest N here does not yet resolve.
    """
    gaussian = GaussianMixture.random(1, 3, seed=3)
    noise = latent_noise(32, 3)
    errors = []
    for N in Ns:
        grid = sigma_grid(disc, N, **({} if disc == "iddpm" else {"sigma_min": 1e-4}))
        x_T = noise.latent() * grid[0]
        x0 = edm_general(
            MixtureDenoiser(gaussian), x_T, grid, noise=noise, solver=solver, schedule=schedule, scaling=scaling
        )
        errors.append((x0 - exact_flow(gaussian, x_T, grid[0].item())).abs().max().item())
    assert errors[0] > errors[1] > errors[2], errors
    # 4x the steps divides a p-th order method's error by about 4^p (3.7 to 4.5 for Euler, 15 to 72 for Heun here).
    assert errors[1] / errors[2] > 0.75 * 4**order, errors
    assert errors[2] < (0.06 if solver == "euler" else 0.025), errors


def moment_errors(x: torch.Tensor, mixture: GaussianMixture) -> float:
    """Largest |error| of a mean or second central moment, in Monte-Carlo standard errors."""
    mean, cov = mixture.mean(), mixture.cov()
    z_mean = (x.mean(0) - mean).abs() / torch.sqrt(torch.diagonal(cov) / len(x))
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    z_cov = (products.mean(0) - cov).abs() / (products.std(0) / math.sqrt(len(x)))
    return max(z_mean.max().item(), z_cov.max().item())


@pytest.mark.parametrize("disc, schedule, scaling", COMBOS[:3])
def test_original_samplers_converge_to_the_mixture(disc, schedule, scaling):
    """EDM Fig. 2's original samplers (Euler) draw the data law as N grows (VE's the slowest)."""
    mixture = GaussianMixture.random(3, 2, seed=5)
    noise = latent_noise(2000, 2)
    errors = []
    for N in (8, 1024):
        grid = sigma_grid(disc, N)
        x = edm_general(
            MixtureDenoiser(mixture), noise.latent() * grid[0], grid, noise=noise,
            solver="euler", schedule=schedule, scaling=scaling,
        )
        errors.append(moment_errors(x, mixture))
    assert errors[0] > errors[1], errors
    assert errors[1] < 4.0, errors


# ---------------------------------------------------------------------------------------------
# (d) NFE per sample, as the plan counts it


@pytest.mark.parametrize("options", [{}, {"solver": "heun"}, {"solver": "euler"}, {"solver": "heun", "alpha": 0.5}])
@pytest.mark.parametrize("N", [1, 2, 9])
def test_nfe_is_the_plans(options, N):
    den = MixtureDenoiser(GaussianMixture.random(2, 2, seed=1))
    noise = latent_noise(4, 2)
    grid = sigma_grid("vp", N)
    edm_general(den, noise.latent() * grid[0], grid, noise=noise, schedule="vp", scaling="vp", **options)
    assert den.nfe == nfe_per_sample({"fn": "edm_general", "options": options}, N)
    assert den.nfe == (N if options.get("solver") == "euler" else 2 * N - 1)


# ---------------------------------------------------------------------------------------------
# The range the vp schedule is solved from, and options


def test_the_dag_passes_the_grids_range_not_its_ends():
    """generate.py L87-100 solves the vp schedule from the discretisation's range, which iddpm's levels lie inside."""
    den = MixtureDenoiser(GaussianMixture.random(1, 2))
    den.sigma_min, den.sigma_max = 0.005, 90.0
    sampler = {"fn": "edm_general", "grid": "iddpm", "options": {"schedule": "vp"}}
    options = sampler_options(sampler, den)
    assert (options["sigma_min"], options["sigma_max"], options["epsilon_s"]) == (0.005, 81.0, 1e-3)
    grid = sigma_grid("iddpm", 10, denoiser=den)
    assert grid[0].item() < 81.0 and grid[-2].item() > 0.005
    vp_grid = {"fn": "edm_general", "grid": "vp", "grid_options": {"epsilon_s": 0.01, "sigma_max": 50.0}}
    assert sampler_options(vp_grid, den) == {"sigma_min": sigma_range("vp", epsilon_s=0.01)[0], "sigma_max": 50.0, "epsilon_s": 0.01}
    assert sampler_options({"fn": "edm_heun", "grid": "edm", "options": {}}, den) == {}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"solver": "rk4"}, "edm_general option solver='rk4' is not one of ['euler', 'heun']"),
        ({"schedule": "cosine"}, "edm_general option schedule='cosine' is not one of ['vp', 've', 'linear']"),
        ({"scaling": "ve"}, "edm_general option scaling='ve' is not one of ['vp', 'none']"),
        ({"alpha": 1.5}, "edm_general option alpha=1.5 must lie in (0, 1]"),
        ({"solver": "euler", "alpha": 0.5}, "edm_general option alpha=0.5 applies to solver 'heun' only, not 'euler'"),
        ({"S_churn": -1.0}, "edm_general options S_churn=-1.0 and S_noise=1.0 must be non-negative"),
    ],
)
def test_bad_options_are_refused_by_the_sampler_and_the_config(options, message):
    den = MixtureDenoiser(GaussianMixture.random(1, 2))
    noise = latent_noise(2, 2)
    grid = edm_sigma_grid(4)
    with pytest.raises(ValueError) as err:
        edm_general(den, noise.latent() * grid[0], grid, noise=noise, **options)
    assert str(err.value).startswith(message)
    with pytest.raises(SamplerConfigError) as err:
        check_grid_range_sampler("fig2", {"fn": "edm_general", "grid": "edm", "options": options})
    assert f"config key 'samplers.fig2.options': {message}" in str(err.value)


def test_config_refuses_the_grids_range_as_sampler_options():
    with pytest.raises(SamplerConfigError, match=r"\['epsilon_s', 'sigma_max'\] are the grid's .* give them in 'samplers.s.grid_options'"):
        check_grid_range_sampler("s", {"fn": "edm_general", "grid": "vp", "options": {"sigma_max": 5.0, "epsilon_s": 0.1}})


def test_sampling_job_passes_the_grids_range_to_the_sampler():
    """bench.steps.sample.generate gives edm_general the range generate.py solves the vp schedule from, not the grid's ends."""
    from sigma_fixtures import edm_mlp

    from bench.core.noise import NoiseSource
    from bench.methods.edm import EDMNetworkDenoiser
    from bench.steps.sample import generate

    torch.manual_seed(0)
    denoiser = EDMNetworkDenoiser(edm_mlp(width=16, depth=1, emb_dim=8, image_size=2))
    sampler = {"fn": "edm_general", "grid": "iddpm", "options": {"solver": "heun", "schedule": "vp", "scaling": "vp"}}
    seeds, shape = torch.arange(3), (1, 2, 2)
    with torch.no_grad():
        x, grid = generate(denoiser, sampler, 6, seeds, shape, batch_size=3)
        noise = NoiseSource(seeds, shape, torch.float32, "cpu")
        x_T = noise.latent() * grid[0]
        ranged = edm_general(denoiser, x_T, grid, noise=noise, sigma_min=0.002, sigma_max=81.0, **sampler["options"])
        ends = edm_general(denoiser, x_T, grid, noise=noise, **sampler["options"])
    torch.testing.assert_close(x, ranged, rtol=0, atol=0)
    assert not torch.allclose(x, ends, rtol=0, atol=1e-6)


def test_config_refuses_grid_options_the_grid_does_not_take():
    with pytest.raises(SamplerConfigError, match=r"grid_options\.epsilon_s': unknown option 'epsilon_s' of sigma grid 'edm'; allowed: \['rho', 'sigma_max', 'sigma_min'\]"):
        check_grid_options("s", {"fn": "edm_general", "grid": "edm", "grid_options": {"epsilon_s": 0.01}})
    with pytest.raises(SamplerConfigError, match=r"grid_options': VP epsilon_s=2.0 must lie in \(0, 1\)"):
        check_grid_range_sampler("s", {"fn": "edm_general", "grid": "vp", "grid_options": {"epsilon_s": 2.0}})
    check_grid_range_sampler("s", {"fn": "edm_general", "grid": "vp", "grid_options": {"epsilon_s": 0.01, "sigma_max": 50.0}})
