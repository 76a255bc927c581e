"""EDM sigma grids, samplers, the discrete-VP bridge and the EDM loss, against closed forms."""

import math

import numpy as np
import pytest
import torch
from sigma_fixtures import PrecondDenoiser, discrete_sigma_grid, edm_mlp

from bench.core.denoiser import DiscreteEpsDenoiser, DiscreteVPAsSigma
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, sigma_of_alpha_bar
from bench.core.sigma_grids import edm_sigma_grid, iddpm_sigma_grid, sigma_grid, ve_sigma_grid, vp_sigma_grid
from bench.core.time_grids import time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.edm import edm_loss, edm_training_sigmas
from bench.nets.edm_precond import iDDPMPrecond
from bench.samplers import ddim
from bench.samplers.edm import euler, heun, stochastic

torch.set_num_threads(1)


class MixtureDenoiser:
    """Exact D(x; sigma) = x + sigma^2 grad log p_sigma(x), p_sigma = p * N(0, sigma^2 I) (Tweedie)."""

    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(self, mixture: GaussianMixture):
        self.mixture = mixture
        self.nfe = 0

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float64)

    def __call__(self, x, sigma):
        self.nfe += 1
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        flat = x.reshape(x.shape[0], -1)
        score = self.mixture.noised(1.0, sigma**2).score(flat)
        return (flat + sigma**2 * score).reshape(x.shape)


def latent_noise(n, dim, seed_offset=0):
    return NoiseSource(torch.arange(n) + seed_offset, (dim,), torch.float64, "cpu")


# ---------------------------------------------------------------------------------------------
# Grids


@pytest.mark.parametrize("N", [2, 5, 18])
def test_edm_grid_is_eq5(N):
    grid = edm_sigma_grid(N)
    rho, lo, hi = 7.0, 0.002, 80.0
    expected = [(hi ** (1 / rho) + i / (N - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(N)]
    assert grid.dtype == torch.float64 and grid.shape == (N + 1,)
    assert grid[:-1].tolist() == pytest.approx(expected, rel=1e-13)
    assert grid[0].item() == pytest.approx(80.0, rel=1e-14)
    assert grid[N - 1].item() == pytest.approx(0.002, rel=1e-12)
    assert grid[N].item() == 0.0
    # rho spacing: sigma^(1/rho) is an arithmetic sequence.
    steps = torch.diff(grid[:-1] ** (1 / rho))
    assert torch.allclose(steps, torch.full_like(steps, (lo ** (1 / rho) - hi ** (1 / rho)) / (N - 1)), rtol=1e-10)


def test_edm_grid_with_one_step_is_sigma_max_then_zero():
    assert edm_sigma_grid(1).tolist() == [80.0, 0.0]


def test_grid_clamps_to_the_network_range_and_rounds_like_iddpm_precond():
    net = iDDPMPrecond(torch.nn.Identity(), 8, 1)
    den = PrecondDenoiser(net)
    grid = edm_sigma_grid(18, denoiser=den)
    # generate.py: sigma_min = max(0.002, net.sigma_min) = u_{M-1}; every level is a grid value u_j.
    assert grid[17].item() == pytest.approx(float(net.u[net.M - 1]))
    u = net.u.to(torch.float64)
    assert all(torch.any(u == s) for s in grid[:-1])


def test_ve_grid_is_geometric():
    grid = ve_sigma_grid(6)
    ratios = grid[1:-1] / grid[:-2]
    assert torch.allclose(ratios, torch.full_like(ratios, (0.02 / 100.0) ** (1 / 5)), rtol=1e-12)
    assert grid[0].item() == pytest.approx(100.0) and grid[5].item() == pytest.approx(0.02)


def test_vp_grid_ends_and_quadratic_log_variance():
    eps_s = 1e-3
    grid = vp_sigma_grid(7, epsilon_s=eps_s)
    # generate.py L88-92: the default range is [sigma(eps_s), sigma(1)] of beta_d = 19.9, beta_min = 0.1.
    assert grid[0].item() == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel=1e-12)
    assert grid[6].item() == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * eps_s**2 + 0.1 * eps_s) - 1), rel=1e-9)
    # ln(1 + sigma^2) = beta_d t^2/2 + beta_min t with t linear in i: constant second differences.
    second = torch.diff(torch.log1p(grid[:-1] ** 2), n=2)
    assert torch.allclose(second, second[0].expand_as(second), rtol=1e-9)


def test_iddpm_grid_takes_levels_of_the_official_u_grid():
    net = iDDPMPrecond(torch.nn.Identity(), 8, 1)
    u = net.u.to(torch.float64)
    grid = iddpm_sigma_grid(10)
    # A float64 recursion here, float32 in the wrapper, whose recursion loses digits to cancellation near u = 0.
    picked = [int((u - s).abs().argmin()) for s in grid[:-1]]
    assert torch.allclose(grid[:-1], u[picked], rtol=1e-3)
    # generate.py L112-114: alpha_bar(j) of an integer tensor j is float32; u_999 = sqrt(1 / ratio - 1) in float64.
    abar = [torch.sin(0.5 * math.pi * torch.tensor(j) / 1000 / 1.008) ** 2 for j in (999, 1000)]
    ratio = float((abar[0] / abar[1]).clamp(min=0.001))
    assert grid[9].item() == pytest.approx(math.sqrt(1 / ratio - 1), rel=1e-12)
    float64_ratio = math.sin(0.5 * math.pi * 999 / 1000 / 1.008) ** 2 / math.sin(0.5 * math.pi / 1.008) ** 2
    assert grid[9].item() != pytest.approx(math.sqrt(1 / float64_ratio - 1), rel=1e-4)
    assert picked[0] == 8 and picked[-1] == 999  # sigma_max = 81 keeps u_8 = 80.2; sigma_min keeps u_999
    assert picked == sorted(picked)


def test_sigma_grid_rejects_unknown_kind_and_bad_sizes():
    with pytest.raises(ValueError, match="'cosine' is not one of"):
        sigma_grid("cosine", 10)
    with pytest.raises(ValueError, match="N=0 must be a positive integer"):
        edm_sigma_grid(0)
    with pytest.raises(ValueError, match="sigma_min=5.0, sigma_max=1.0"):
        edm_sigma_grid(4, sigma_min=5.0, sigma_max=1.0)


def test_samplers_reject_a_grid_not_ending_at_zero():
    den = MixtureDenoiser(GaussianMixture.random(1, 2))
    noise = latent_noise(3, 2)
    with pytest.raises(ValueError, match="descend from positive sigmas to 0"):
        heun(den, noise.latent(), torch.tensor([2.0, 1.0]), noise=noise)
    with pytest.raises(ValueError, match="descend from positive sigmas to 0"):
        heun(den, noise.latent(), torch.tensor([1.0, 2.0, 0.0]), noise=noise)


def test_repeated_sigmas_are_zero_length_steps():
    """A grid rounded to a discrete model's sigmas can repeat a level; that step changes nothing."""
    den = MixtureDenoiser(GaussianMixture.random(1, 2))
    noise = latent_noise(3, 2)
    x = noise.latent() * 2.0
    once = euler(den, x, torch.tensor([2.0, 1.0, 0.0]), noise=noise)
    twice = euler(den, x, torch.tensor([2.0, 1.0, 1.0, 0.0]), noise=noise)
    assert torch.allclose(once, twice, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Deterministic samplers: order of convergence on Gaussian data, NFE


def exact_flow(gaussian: GaussianMixture, x_T: torch.Tensor, sigma0: float) -> torch.Tensor:
    """Probability-flow ODE solution at sigma = 0 for N(m, C) data.

    Along each eigendirection of C (eigenvalue c), x - m scales by sqrt(c / (c + sigma0^2)).
    """
    c, V = torch.linalg.eigh(gaussian.covs[0])
    m = gaussian.means[0]
    z = (x_T - m) @ V
    return m + (z * torch.sqrt(c / (c + sigma0**2))) @ V.T


@pytest.mark.parametrize("solver, order", [(euler, 1.0), (heun, 2.0)])
def test_order_of_convergence_on_gaussian_data(solver, order):
    gaussian = GaussianMixture.random(1, 3, seed=3)
    noise = latent_noise(64, 3)
    sigma0 = 80.0
    x_T = noise.latent() * sigma0
    exact = exact_flow(gaussian, x_T, sigma0)
    Ns = [16, 32, 64, 128]
    errors = []
    for N in Ns:
        # sigma_min small enough that the final Euler step to 0 (error ~ sigma_min^2) is negligible.
        grid = edm_sigma_grid(N, sigma_min=1e-5, sigma_max=sigma0)
        x0 = solver(MixtureDenoiser(gaussian), x_T, grid, noise=noise)
        errors.append((x0 - exact).abs().max().item())
    slope = -np.polyfit(np.log(Ns), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.15, (slope, errors)


@pytest.mark.parametrize("solver, nfe", [(euler, lambda N: N), (heun, lambda N: 2 * N - 1)])
@pytest.mark.parametrize("N", [1, 2, 7])
def test_nfe_counted_by_the_wrapper(solver, nfe, N):
    net = edm_mlp(width=16, depth=1, emb_dim=8, image_size=2)
    den = PrecondDenoiser(net)
    noise = NoiseSource(torch.arange(3), (1, 2, 2), torch.float64, "cpu")
    grid = edm_sigma_grid(N)
    solver(den, noise.latent() * grid[0], grid, noise=noise)
    assert den.nfe == nfe(N)


def test_stochastic_nfe_and_no_churn_is_heun():
    gaussian = GaussianMixture.random(2, 2, seed=1)
    noise = latent_noise(20, 2)
    grid = edm_sigma_grid(9)
    x_T = noise.latent() * grid[0]
    den = MixtureDenoiser(gaussian)
    churned = stochastic(den, x_T, grid, noise=noise, S_churn=10.0)
    assert den.nfe == 2 * 9 - 1
    assert torch.equal(stochastic(den, x_T, grid, noise=noise), heun(den, x_T, grid, noise=noise))
    assert not torch.allclose(churned, heun(den, x_T, grid, noise=noise))


def test_stochastic_sample_depends_only_on_its_own_seed():
    den = MixtureDenoiser(GaussianMixture.random(3, 2, seed=2))
    grid = edm_sigma_grid(6)
    big, small = latent_noise(10, 2), latent_noise(4, 2)
    a = stochastic(den, big.latent() * grid[0], grid, noise=big, S_churn=30.0)
    b = stochastic(den, small.latent() * grid[0], grid, noise=small, S_churn=30.0)
    assert torch.allclose(a[:4], b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Stochastic sampler: moments of a mixture


def test_stochastic_sampler_reproduces_mixture_moments():
    mixture = GaussianMixture.random(3, 2, seed=5)
    n = 4000
    noise = latent_noise(n, 2)
    # gamma = S_churn / N = 0.2: at N = 48 with gamma = sqrt(2) - 1 the discretisation bias of the
    # covariance is ~1.5 MC standard errors of 4000 samples; here it is below 0.5.
    grid = edm_sigma_grid(100)
    x = stochastic(
        MixtureDenoiser(mixture),
        noise.latent() * grid[0],
        grid,
        noise=noise,
        S_churn=20.0,
        S_tmin=0.01,
        S_tmax=50.0,
        S_noise=1.0,
    )
    mean, cov = mixture.mean(), mixture.cov()
    mean_se = torch.sqrt(torch.diagonal(cov) / n)
    assert torch.all((x.mean(0) - mean).abs() < 5 * mean_se), (x.mean(0), mean, mean_se)
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    cov_se = products.std(0) / math.sqrt(n)
    assert torch.all((products.mean(0) - cov).abs() < 5 * cov_se), (products.mean(0), cov, cov_se)


# ---------------------------------------------------------------------------------------------
# Discrete VP models in sigma space


def discrete_setup(T=200):
    schedule = DiscreteSchedule.named("linear", T)
    mixture = GaussianMixture.random(2, 4, seed=7)
    eps_den = DiscreteEpsDenoiser(ExactEpsNetwork(mixture, schedule, (1, 2, 2)), schedule)
    return schedule, mixture, eps_den


def test_discrete_vp_denoiser_is_the_exact_sigma_space_denoiser():
    schedule, mixture, eps_den = discrete_setup()
    den = DiscreteVPAsSigma(eps_den)
    exact = MixtureDenoiser(mixture)
    x = latent_noise(50, 4).latent().reshape(50, 1, 2, 2)
    for n in [0, 37, 199]:
        sigma = sigma_of_alpha_bar(schedule.alpha_bars[n])
        xs = x * torch.sqrt(1 + sigma**2)
        assert torch.allclose(den(xs, sigma), exact(xs, sigma), rtol=0, atol=1e-10)
    assert den.nfe == 3


def test_discrete_vp_round_sigma_snaps_to_the_nearest_chain_sigma():
    schedule, _, eps_den = discrete_setup()
    den = DiscreteVPAsSigma(eps_den)
    sig = sigma_of_alpha_bar(schedule.alpha_bars)
    assert den.sigma_min == sig[0].item() and den.sigma_max == sig[-1].item()
    # a sigma 40% of the way from level 50 to 51 snaps to 50; 60% of the way snaps to 51
    near = sig[50] + 0.4 * (sig[51] - sig[50])
    far = sig[50] + 0.6 * (sig[51] - sig[50])
    assert den.round_sigma(torch.stack([near, far])).tolist() == [sig[50].item(), sig[51].item()]
    assert den.round_sigma(torch.tensor(1e6)).item() == sig[-1].item()


@pytest.mark.parametrize("K", [5, 20])
def test_euler_on_discrete_vp_equals_ddim_eta0(K):
    schedule, _, eps_den = discrete_setup()
    steps = time_grid("even", schedule.T, K)
    sigma_grid_ = discrete_sigma_grid(schedule, steps)
    noise = NoiseSource(torch.arange(30), (1, 2, 2), torch.float64, "cpu")
    x_T = noise.latent()
    den = DiscreteVPAsSigma(eps_den)
    assert torch.equal(den.round_sigma(sigma_grid_[:-1]), sigma_grid_[:-1])
    # the same x_T in sigma space: x = x_n / sqrt(abar_n) = x_n sqrt(1 + sigma^2)
    via_euler = euler(den, x_T * torch.sqrt(1 + sigma_grid_[0] ** 2), sigma_grid_, noise=noise)
    assert eps_den.nfe == K
    via_ddim = ddim.sample(DiscreteEpsDenoiser(eps_den.net, schedule), x_T, steps, noise=noise, eta=0.0, clip_x0=False)
    assert torch.allclose(via_euler, via_ddim, rtol=0, atol=1e-10)


def test_discrete_vp_rejects_a_batch_of_sigmas():
    _, _, eps_den = discrete_setup()
    with pytest.raises(ValueError, match="one positive noise level per call"):
        DiscreteVPAsSigma(eps_den)(torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]))


# ---------------------------------------------------------------------------------------------
# EDM loss


def test_training_sigmas_are_lognormal():
    n = 20000
    log_sigma = torch.log(edm_training_sigmas(n, torch.Generator().manual_seed(0))).double()
    assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / math.sqrt(n)
    # std of the sample std of a normal: P_std / sqrt(2 n)
    assert abs(log_sigma.std().item() - 1.2) < 5 * 1.2 / math.sqrt(2 * n)


def test_loss_of_a_zero_backbone_is_one_for_data_of_variance_sigma_data_squared():
    # F = 0 (the MLP's zero-initialised head): D = c_skip (y + n) and, for y ~ N(0, sigma_data^2),
    # lambda (c_skip (y + n) - y)^2 is chi^2_1 at every sigma (EDM's unit-variance training target).
    net = edm_mlp(width=16, depth=1, emb_dim=8, image_size=2)
    gen = torch.Generator().manual_seed(1)
    B, d = 8192, 4
    y = torch.randn(B, 1, 2, 2, generator=gen) * 0.5
    loss = edm_loss(net, y, gen).item()
    assert abs(loss - 1.0) < 5 * math.sqrt(2 / (B * d)), loss


class ExactGaussianDenoiser:
    """Bayes-optimal D(x; sigma) = m + C (C + sigma^2 I)^{-1} (x - m) for N(m, C) data, one sigma per sample."""

    sigma_data = 0.5

    def __init__(self, gaussian: GaussianMixture):
        self.C, self.m = gaussian.covs[0].float(), gaussian.means[0].float()

    def __call__(self, x, sigma):
        eye = torch.eye(self.m.numel())
        gain = self.C @ torch.linalg.inv(self.C + sigma.reshape(-1, 1, 1) ** 2 * eye)
        flat = x.reshape(x.shape[0], -1)
        return (self.m + torch.einsum("nij,nj->ni", gain, flat - self.m)).reshape(x.shape)


def test_a_few_adam_steps_close_most_of_the_gap_to_the_optimal_loss():
    torch.manual_seed(0)
    gaussian = GaussianMixture.random(1, 4, seed=11)
    data = gaussian.sample(512, torch.Generator().manual_seed(2)).float().reshape(512, 1, 2, 2)
    net = edm_mlp(width=64, depth=2, emb_dim=16, image_size=2)

    def held_out_loss(model):
        # the same sigma and noise draws every time, so the comparison is paired
        with torch.no_grad():
            return edm_loss(model, data, torch.Generator().manual_seed(99)).item()

    before, optimum = held_out_loss(net), held_out_loss(ExactGaussianDenoiser(gaussian))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        loss = edm_loss(net, data[torch.randint(0, 512, (128,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss(net)
    assert math.isfinite(before) and math.isfinite(after)
    assert after - optimum < 0.2 * (before - optimum), (before, after, optimum)
