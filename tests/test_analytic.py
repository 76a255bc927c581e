"""Analytic-DPM checked against Gaussian data, where the optimal reverse variance is closed-form.

For x0 ~ N(m, C) and x_n = sqrt(abar_n) x0 + sqrt(bbar_n) eps, x_n ~ N(sqrt(abar_n) m, S_n) with
S_n = abar_n C + bbar_n I, and the exact eps prediction is eps*(x_n) = sqrt(bbar_n) S_n^{-1}(x_n - E x_n)
~ N(0, A_n), A_n = bbar_n S_n^{-1}. Hence gamma_n = E||eps*||^2 / d = tr(A_n) / d, and one sample of
||eps*||^2 / d has variance 2 tr(A_n^2) / d^2, which gives the Monte Carlo standard error.

The KL-optimal isotropic reverse variance is sigma*^2 = tr Cov[x_s | x_t] / d (moment matching), from
the joint Gaussian of (x_s, x_t) under the forward process with lambda: Cov[x_s] = abar_s C + bbar_s I,
Cov[x_s, x_t] = sqrt(abar_s abar_t) C + sqrt((bbar_s - lambda^2) bbar_t) I.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from bench.core.denoiser import DiscreteEpsDenoiser, Prediction
from bench.core.noise import NoiseSource, normal
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import even_grid, quad_grid, time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.analytic import (
    PAPER_PIXEL_QUANTUM,
    BoundTerms,
    analytic_variance,
    clipped_analytic_variance,
    estimate_gamma,
    forward_lambda2,
    load_moments,
    mean_square_eps,
    model_hash,
    pair_variances,
    pixel_variance_threshold,
    sampling_variances,
    save_moments,
    step_statistics,
    trajectory_variances,
    variance_bounds,
    vlb_bits_per_dim_analytic,
)
from bench.methods.analytic_trajectory import (
    bound_trajectory,
    least_cost_trajectory,
    optimal_trajectory,
    trajectory_cost,
)
from bench.metrics.nll import vlb_bits_per_dim
from bench.nets.mlp import MLPDenoiser
from bench.runtime.io import CorruptFileError
from bench.samplers import analytic_ddim, analytic_ddpm, ddim, ddpm
from bench.steps.sample import generate, sampler_view

torch.set_num_threads(1)

SCHED = DiscreteSchedule.named("linear", 1000)
ABAR = SCHED.alpha_bars
GAUSS = GaussianMixture.random(1, 3, seed=1)
M = 4000
STEPS = torch.unique(torch.cat([even_grid(1000, 10), even_grid(1000, 21), torch.tensor([1, 3, 7, 30, 75, 150])]))


def _gaussian_moments(mixture: GaussianMixture, n: int) -> tuple[float, float]:
    """(gamma_n, standard deviation of one sample of ||eps*||^2 / d) for single-Gaussian data."""
    d = mixture.dim
    S = ABAR[n] * mixture.covs[0] + (1 - ABAR[n]) * torch.eye(d, dtype=torch.float64)
    A = (1 - ABAR[n]) * torch.linalg.inv(S)
    return float(torch.trace(A) / d), float(torch.sqrt(2 * torch.trace(A @ A)) / d)


def _optimal_variance(mixture: GaussianMixture, s: int, t: int, lambda2: float) -> float:
    """tr Cov[x_s | x_t] / d under the forward process with lambda^2 (the moment-matching optimum)."""
    C, d = mixture.covs[0], mixture.dim
    eye = torch.eye(d, dtype=torch.float64)
    a_s, a_t = ABAR[s], ABAR[t]
    ss = a_s * C + (1 - a_s) * eye
    tt = a_t * C + (1 - a_t) * eye
    st = torch.sqrt(a_s * a_t) * C + torch.sqrt((1 - a_s - lambda2) * (1 - a_t)) * eye
    return float(torch.trace(ss - st @ torch.linalg.solve(tt, st.T)) / d)


@pytest.fixture(scope="module")
def gaussian_gamma() -> tuple[torch.Tensor, torch.Tensor]:
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = GAUSS.sample(M, torch.Generator().manual_seed(0))
    return mean_square_eps(den, x0, STEPS, torch.arange(M) + 7, batch_size=1500)


# --- gamma ----------------------------------------------------------------------------------------


def test_gamma_equals_its_closed_form_within_mc_error(gaussian_gamma):
    gamma, sem = gaussian_gamma
    for n in STEPS.tolist():
        exact, sd = _gaussian_moments(GAUSS, n)
        assert abs(gamma[n] - exact) < 5 * sd / math.sqrt(M), (n, float(gamma[n]), exact)
        assert sem[n] == pytest.approx(sd / math.sqrt(M), rel=0.15)
    off = torch.ones(1000, dtype=torch.bool)
    off[STEPS] = False
    assert torch.isnan(gamma[off]).all()


def test_gamma_does_not_depend_on_the_batch_size():
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = GAUSS.sample(300, torch.Generator().manual_seed(1))
    a = estimate_gamma(den, x0, [5, 500], torch.arange(300), batch_size=300)
    b = estimate_gamma(den, x0, [5, 500], torch.arange(300), batch_size=7)
    assert den.nfe == 2 + 2 * 43
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0, equal_nan=True)


def test_gamma_rejects_bad_steps_and_seeds():
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = GAUSS.sample(10, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"steps \[3, 1000\] must be distinct step indices in \[0, T=1000\)"):
        estimate_gamma(den, x0, [3, 1000], torch.arange(10))
    with pytest.raises(ValueError, match=r"seeds of shape \(9,\) must give one seed per sample, shape \(10,\)"):
        estimate_gamma(den, x0, [3], torch.arange(9))


# --- the analytic variance --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["ddpm", "ddim"])
def test_analytic_variance_equals_the_kl_optimal_variance(gaussian_gamma, form):
    gamma, _ = gaussian_gamma
    pairs = list(itertools.pairwise(even_grid(1000, 10).tolist()))
    pairs += list(itertools.pairwise(even_grid(1000, 21).tolist()))
    pairs += [(0, 1), (1, 3), (3, 7), (7, 30), (30, 75), (75, 150), (0, 999), (150, 999)]
    for s, t in pairs:
        lam2 = forward_lambda2(ABAR[s], ABAR[t], form)
        exact = _optimal_variance(GAUSS, s, t, float(lam2))
        est = analytic_variance(ABAR[s], ABAR[t], gamma[t], lam2)
        coeff2 = float(analytic_variance(ABAR[s], ABAR[t], torch.tensor(0.0), lam2) - lam2)
        tol = 5 * coeff2 * _gaussian_moments(GAUSS, t)[1] / math.sqrt(M) + 1e-12 * exact
        assert abs(float(est) - exact) <= tol, (form, s, t, float(est), exact)


def test_ddpm_lambda_is_beta_tilde_and_ddim_lambda_is_zero():
    s, t = torch.tensor(100), torch.tensor(300)
    b = 1 - ABAR[t] / ABAR[s]
    assert float(forward_lambda2(ABAR[s], ABAR[t], "ddpm")) == pytest.approx(
        float((1 - ABAR[s]) / (1 - ABAR[t]) * b), rel=1e-12
    )
    assert float(forward_lambda2(ABAR[s], ABAR[t], "ddim")) == 0.0
    with pytest.raises(ValueError, match=r"form 'ddgm' is not one of \['ddpm', 'ddim'\]"):
        forward_lambda2(ABAR[s], ABAR[t], "ddgm")


def test_bounds_contain_the_true_optimal_variance():
    pairs = [(0, 1), (10, 40), (100, 300), (500, 520), (0, 999), (900, 999)]
    for form in ("ddpm", "ddim"):
        for s, t in pairs:
            lam2 = forward_lambda2(ABAR[s], ABAR[t], form)
            exact = _optimal_variance(GAUSS, s, t, float(lam2))
            lower, eq11, eq12 = variance_bounds(ABAR[s], ABAR[t], lam2)
            assert float(lower) <= exact * (1 + 1e-12) and exact <= float(torch.minimum(eq11, eq12)) * (1 + 1e-12)


@pytest.mark.parametrize("form", ["ddpm", "ddim"])
def test_clipped_variance_stays_inside_theorem_2(form):
    g = torch.Generator().manual_seed(3)
    clipped_low = clipped_high = 0
    eq11_tighter = eq12_tighter = 0
    for _ in range(200):
        K = int(torch.randint(2, 30, (1,), generator=g))
        grid = torch.sort(torch.randperm(1000, generator=g)[:K]).values
        gamma = torch.rand(1000, generator=g, dtype=torch.float64) * 2 - 0.5
        var = trajectory_variances(ABAR, grid, gamma, form=form)
        abar_s, abar_t = ABAR[grid[:-1]], ABAR[grid[1:]]
        lam2 = forward_lambda2(abar_s, abar_t, form)
        lower, eq11, eq12 = variance_bounds(abar_s, abar_t, lam2)
        upper = torch.minimum(eq11, eq12)
        assert torch.all(var >= lower) and torch.all(var <= upper)
        raw = trajectory_variances(ABAR, grid, gamma, form=form, clip=False)
        clipped_low += int((raw < lower).sum())
        clipped_high += int((raw > upper).sum())
        eq11_tighter += int((eq11 < eq12).sum())
        eq12_tighter += int((eq12 < eq11).sum())
    # the random gammas exercise both clips, and each upper bound is the tighter one somewhere
    assert min(clipped_low, clipped_high, eq11_tighter, eq12_tighter) > 0


def test_clip_to_bounds_elementwise():
    lam2 = forward_lambda2(ABAR[100], ABAR[200], "ddpm")
    lower, eq11, eq12 = variance_bounds(ABAR[100], ABAR[200], lam2)
    assert clipped_analytic_variance(ABAR[100], ABAR[200], torch.tensor(1.7), lam2) == lower
    assert clipped_analytic_variance(ABAR[100], ABAR[200], torch.tensor(-3.0), lam2) == torch.minimum(eq11, eq12)
    mid = analytic_variance(ABAR[100], ABAR[200], torch.tensor(0.9), lam2)
    assert lower < mid < torch.minimum(eq11, eq12)
    assert clipped_analytic_variance(ABAR[100], ABAR[200], torch.tensor(0.9), lam2) == mid


def test_sigma2_pixel_clip_caps_only_the_step_to_tau_1():
    assert pixel_variance_threshold(2) == pytest.approx((2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2, rel=1e-15)
    assert PAPER_PIXEL_QUANTUM == 2 / 255
    assert pixel_variance_threshold(1, 2 / 16) == pytest.approx((2 / 16) ** 2 * math.pi / 2, rel=1e-15)
    grid = even_grid(1000, 10)
    gamma = torch.full((1000,), 0.5, dtype=torch.float64)
    free = sampling_variances(ABAR, grid, gamma, form="ddim")
    capped = sampling_variances(ABAR, grid, gamma, form="ddim", sigma2_clip_pixel=1, pixel_quantum=2 / 16)
    assert free[0] > pixel_variance_threshold(1, 2 / 16)
    assert capped[0] == pixel_variance_threshold(1, 2 / 16)
    assert torch.equal(capped[1:], free[1:])
    with pytest.raises(ValueError, match=r"sigma_2 clip of -1 pixels of quantum 0.125: both must be positive"):
        pixel_variance_threshold(-1, 0.125)


def test_gamma_must_cover_the_trajectory():
    grid = even_grid(1000, 10)
    gamma = torch.full((1000,), 0.5, dtype=torch.float64)
    gamma[111] = math.nan
    with pytest.raises(ValueError, match=r"gamma is not finite \(not estimated\?\) at steps \[111\]"):
        trajectory_variances(ABAR, grid, gamma, form="ddpm")
    with pytest.raises(ValueError, match=r"gamma has shape \(999,\); it must hold one value per step, shape \(1000,\)"):
        trajectory_variances(ABAR, grid, gamma[1:], form="ddpm")


# --- trajectories -------------------------------------------------------------------------------------


def _brute_force(cost: torch.Tensor, K: int) -> tuple[float, list[int]]:
    N = cost.shape[0]
    best = (math.inf, [])
    for mid in itertools.combinations(range(1, N - 1), K - 2):
        path = [0, *mid, N - 1]
        total = sum(float(cost[a, b]) for a, b in itertools.pairwise(path))
        best = min(best, (total, path))
    return best


@pytest.mark.parametrize("K", [2, 3, 4, 5])
def test_dp_equals_brute_force(K):
    g = torch.Generator().manual_seed(K)
    ten = ABAR[even_grid(1000, 10)]  # a valid 10-step chain
    for trial in range(20):
        if trial % 2:
            cost = torch.rand(10, 10, generator=g, dtype=torch.float64)
        else:
            cost = trajectory_cost(ten, torch.rand(10, generator=g, dtype=torch.float64))
        total, path = _brute_force(cost, K)
        found = least_cost_trajectory(cost, K)
        assert found.tolist() == path
        assert sum(float(cost[a, b]) for a, b in itertools.pairwise(found.tolist())) == pytest.approx(total)


def test_dp_cost_is_eq_14():
    gamma = torch.full((1000,), 0.7, dtype=torch.float64)
    cost = trajectory_cost(ABAR, gamma)
    s, t = 100, 300
    # Corollary 4's log(1 - beta_{t|s} E||score||^2 / d), with E||score||^2 / d = gamma_t / bbar_t
    beta_ts = 1 - ABAR[t] / ABAR[s]
    assert float(cost[s, t]) == pytest.approx(math.log(1 - float(beta_ts) * 0.7 / (1 - float(ABAR[t]))), rel=1e-12)
    # where the clip does not bind, it is log(sigma-hat^2 / beta-tilde) less a term that telescopes
    lam2 = forward_lambda2(ABAR[s], ABAR[t], "ddpm")
    var = analytic_variance(ABAR[s], ABAR[t], gamma[t], lam2)
    assert clipped_analytic_variance(ABAR[s], ABAR[t], gamma[t], lam2) == var
    a_ts = ABAR[t] / ABAR[s]
    shift = torch.log((1 - ABAR[t]) / (a_ts * (1 - ABAR[s])))
    assert float(cost[s, t]) == pytest.approx(float(torch.log(var / lam2) - shift), rel=1e-10)
    assert torch.isinf(cost[t, s]) and torch.isinf(cost[s, s])


def _official_dp_trajectory(betas: torch.Tensor, gamma: torch.Tensor, K: int) -> list[int]:
    """Analytic-DPM's _get_fn_m + _solve_fn_dp written out (1-based steps, alphas[0] = 1), as 0-based indices."""
    N = len(betas)
    alphas = np.concatenate([[1.0], 1.0 - betas.numpy()])
    cum_betas = 1.0 - alphas.cumprod()
    ms_score = np.concatenate([[0.0], gamma.numpy()]) / np.where(cum_betas > 0, cum_betas, 1.0)
    F = np.full((N + 1, N + 1), np.inf)
    for s in range(1, N + 1):
        skip_betas = 1.0 - alphas[s + 1 :].cumprod()
        F[s, s + 1 :] = np.log(1.0 - skip_betas * ms_score[s + 1 :])
    C = np.full((K + 1, N + 1), np.inf)
    D = np.full((K + 1, N + 1), -1)
    C[2, 2:N] = F[1, 2:N]
    for k in range(3, K + 1):
        total = C[k - 1][:, None] + F
        C[k, k:] = total.min(axis=0)[k:]
        D[k, k:] = total.argmin(axis=0)[k:]
    path, n = [N], N
    for k in range(K, 2, -1):
        n = int(D[k, n])
        path.append(n)
    return [p - 1 for p in [1, *path[::-1]]]


def test_optimal_trajectory_uses_the_official_unclipped_cost():
    # gamma well below 1 near t = T puts the estimated Cov[x0] = bbar / abar (1 - gamma) far above Eq. 12's
    # bound there: the clip binds, and the clipped cost picks another trajectory than the official one.
    n = torch.arange(1000, dtype=torch.float64)
    gamma = 0.999 - 0.3 * (n / 999) ** 4
    official = _official_dp_trajectory(SCHED.betas, gamma, 10)
    assert optimal_trajectory(ABAR, gamma, 10).tolist() == official
    s, t = torch.triu_indices(1000, 1000, offset=1)
    var, lam2 = pair_variances(ABAR, s, t, gamma, form="ddpm")
    clipped = torch.full((1000, 1000), math.inf, dtype=torch.float64)
    clipped[s, t] = torch.log(var / lam2)
    assert least_cost_trajectory(clipped, 10).tolist() != official


def test_optimal_trajectory_spaces_steps_evenly_over_an_untrusted_tail():
    abar = DiscreteSchedule.named("linear", 100).alpha_bars
    gamma = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.9
    assert optimal_trajectory(abar, gamma, 10).tolist() == least_cost_trajectory(trajectory_cost(abar, gamma), 10).tolist()
    gamma[95:] = 1.01  # tail of 5 -> the last 10 steps are untrusted; K2 = 1
    traj = optimal_trajectory(abar, gamma, 10)
    assert traj.tolist() == least_cost_trajectory(trajectory_cost(abar[:90], gamma[:90]), 9).tolist() + [99]
    gamma[90:] = 1.01  # tail of 10 -> 20 untrusted; K1 = ceil(0.84 * 20) = 17, K2 = 3, stride 20/3
    traj = optimal_trajectory(abar, gamma, 20)
    assert traj[-3:].tolist() == [86, 92, 99] and traj[16] == 79 and len(traj) == 20
    gamma[30:] = 1.01
    with pytest.raises(ValueError, match=r"from step 30 on .*: the last 140 steps are untrusted, leaving 0 of T=100"):
        optimal_trajectory(abar, gamma, 10)


@pytest.mark.parametrize("T,K", [(1000, 10), (1000, 100), (200, 150), (200, 200)])
def test_banded_dp_equals_the_full_dp(T, K):
    # the full recursion over all T nodes at every position, as Alg. 1 states it (O(K T^2))
    gamma = torch.rand(T, generator=torch.Generator().manual_seed(K), dtype=torch.float64) * 0.99
    cost = trajectory_cost(DiscreteSchedule.named("linear", T).alpha_bars, gamma)
    best = torch.full((T,), math.inf, dtype=torch.float64)
    best[0] = 0.0
    back = []
    for _ in range(K - 1):
        best, arg = (best[:, None] + cost).min(dim=0)
        back.append(arg)
    path = [T - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    assert least_cost_trajectory(cost, K).tolist() == path[::-1]


def test_optimal_grid_of_a_sampling_cell_is_the_dp_trajectory():
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    gamma = torch.tensor([_gaussian_moments(GAUSS, n)[0] for n in range(1000)], dtype=torch.float64)
    sampler = {"fn": "analytic_ddim", "grid": "optimal", "options": {"gamma": gamma}}
    _, grid = generate(den, sampler, 10, torch.arange(4), (3,), batch_size=4, gamma=gamma)
    assert grid.tolist() == optimal_trajectory(ABAR, gamma, 10).tolist()
    assert grid.tolist() == time_grid("optimal", 1000, 10, alpha_bars=ABAR, gamma=gamma).tolist()
    assert grid.tolist() != even_grid(1000, 10).tolist()


def _official_bound_trajectory(betas: torch.Tensor, terms: BoundTerms, K: int, small_sigma: bool) -> list[int]:
    """Analytic-DPM's get_nelbo_terms F (per dim) + dp_vb.py vectorized_dp / fetch_path, as 0-based steps."""
    N = len(betas)
    alphas = np.concatenate([[1.0], 1.0 - betas.numpy()])
    cum_alphas = alphas.cumprod()
    cum_betas = 1.0 - cum_alphas
    recon = np.concatenate([[np.nan], terms.recon.numpy()])
    F = np.zeros((N + 1, N + 1))
    F[0, 1:] = terms.decoder_nll.numpy()
    for s in range(1, N + 1):
        for r in range(s + 1, N + 1):
            skip_beta = 1.0 - alphas[s + 1 : r + 1].prod()
            tilde_beta = skip_beta * cum_betas[s] / cum_betas[r]
            sigma2 = tilde_beta if small_sigma else skip_beta
            c = 0.5 * (tilde_beta / sigma2 + np.log(sigma2 / tilde_beta) - 1.0)
            F[s, r] = c + 0.5 * cum_alphas[s] * skip_beta**2 / (cum_betas[r] ** 2 * sigma2) * recon[r]
    F = np.triu(F, 1) + np.tril(np.full(F.shape, np.inf))
    C = np.full((N + 1, N + 1), np.inf)
    D = np.full((N + 1, N + 1), -1)
    C[0, 0] = 0
    for k in range(1, N + 1):
        total = C[k - 1][:, None] + F
        C[k] = total.min(axis=0)
        D[k] = total.argmin(axis=0)
    path, t = [], N
    for k in reversed(range(K + 1)):
        path.append(t)
        t = D[k, t]
    return [int(n) - 1 for n in path[::-1][1:]]


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_bound_trajectory_is_the_official_dp_over_the_bounds_terms(variance):
    sched = DiscreteSchedule.named("linear", 120)
    g = torch.Generator().manual_seed(4)
    # decoder terms that favour a first step above 0 for some K, as the official DP allows
    terms = BoundTerms(
        recon=torch.rand(120, generator=g, dtype=torch.float64) * 0.05,
        decoder_nll=torch.linspace(3.0, 0.5, 120, dtype=torch.float64) + torch.rand(120, generator=g, dtype=torch.float64),
    )
    for K in (2, 5, 10, 30):
        found = bound_trajectory(sched.alpha_bars, terms, K, variance)
        assert found.tolist() == _official_bound_trajectory(sched.betas, terms, K, variance == "beta_tilde"), K
        assert len(found) == K and found[-1] == 119
    with pytest.raises(ValueError, match=r"bound trajectory variance 'analytic' is not one of \['beta', 'beta_tilde'\]"):
        bound_trajectory(sched.alpha_bars, terms, 5, "analytic")
    with pytest.raises(ValueError, match=r"the beta bound's recon must be finite at every one of the T=120 steps"):
        bound_trajectory(sched.alpha_bars, BoundTerms(terms.recon[:-1], terms.decoder_nll), 5, "beta")


def test_each_variance_samples_its_own_optimal_trajectory():
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = GAUSS.sample(400, torch.Generator().manual_seed(1)).clamp(-1, 1)
    stats = step_statistics(den, x0, None, torch.arange(400), batch_size=400, max_level=LEVELS)
    terms = BoundTerms(stats["recon"], stats["decoder_nll"])
    gamma = torch.tensor([_gaussian_moments(GAUSS, n)[0] for n in range(1000)], dtype=torch.float64)
    beta = {"fn": "ddpm", "grid": "optimal", "options": {"variance": "beta"}}
    analytic = {"fn": "analytic_ddpm", "grid": "optimal", "options": {"gamma": gamma}}
    _, beta_grid = sampler_view(den, beta, 10, gamma=gamma, bound_terms=terms)
    _, analytic_grid = sampler_view(den, analytic, 10, gamma=gamma, bound_terms=terms)
    assert beta_grid.tolist() == bound_trajectory(ABAR, terms, 10, "beta").tolist()
    assert analytic_grid.tolist() == optimal_trajectory(ABAR, gamma, 10).tolist()
    assert beta_grid.tolist() != analytic_grid.tolist()
    with pytest.raises(ValueError, match=r"needs alpha_bars and bound_terms \(moments saved without them"):
        sampler_view(den, beta, 10, gamma=gamma)
    with pytest.raises(ValueError, match=r"sampler function 'ddim' has no optimal trajectory"):
        sampler_view(den, {"fn": "ddim", "grid": "optimal"}, 10, gamma=gamma, bound_terms=terms)
    with pytest.raises(ValueError, match=r"optimal trajectory variance 'sigma_hat' is not one of \['analytic', 'beta'"):
        time_grid("optimal", 1000, 10, alpha_bars=ABAR, gamma=gamma, bound_terms=terms, variance="sigma_hat")


def test_gamma_from_one_image_is_its_mean_square_eps_with_no_standard_error():
    # Analytic-DPM Table 5 estimates Gamma_n from as few as M = 1 image; a standard error needs two.
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = _rounded(GAUSS.sample(1, torch.Generator().manual_seed(3)).clamp(-1, 1))
    seeds = torch.arange(1) + 5
    gamma, sem = mean_square_eps(den, x0, [0, 40], seeds, batch_size=1)
    for n in (0, 40):
        x_n = torch.sqrt(ABAR[n]) * x0 + torch.sqrt(1 - ABAR[n]) * normal(seeds, n + 1, (3,))
        torch.testing.assert_close(gamma[n], (den(x_n, n).eps ** 2).mean(), rtol=1e-10, atol=0)
        assert torch.isnan(sem[n])


def test_step_statistics_hold_the_bounds_terms_from_the_same_draws():
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = _rounded(GAUSS.sample(300, torch.Generator().manual_seed(3)).clamp(-1, 1))
    seeds = torch.arange(300) + 5
    stats = step_statistics(den, x0, [0, 40, 900], seeds, batch_size=128, max_level=LEVELS)
    gamma, _ = mean_square_eps(den, x0, [0, 40, 900], seeds, batch_size=128)
    assert torch.equal(stats["gamma"][[0, 40, 900]], gamma[[0, 40, 900]])
    assert torch.isnan(stats["recon"][1]) and torch.isnan(stats["decoder_nll"][1])
    for n in (0, 40, 900):
        x_n = torch.sqrt(ABAR[n]) * x0 + torch.sqrt(1 - ABAR[n]) * normal(seeds, n + 1, (3,))
        x0_hat = den(x_n, n).x0.clamp(-1, 1)
        torch.testing.assert_close(stats["recon"][n], ((x0 - x0_hat) ** 2).mean(), rtol=1e-10, atol=0)
        # elbo.py L113: beta-tilde_{1|2} from the first step, 1 - abar_r from any later one
        var = (1 - ABAR[0]) / (1 - ABAR[1]) * (1 - ABAR[1] / ABAR[0]) if n == 0 else 1 - ABAR[n]
        half = 1.0 / LEVELS
        hi = torch.special.ndtr((x0 + half - x0_hat) / var.sqrt())
        lo = torch.special.ndtr((x0 - half - x0_hat) / var.sqrt())
        hi = torch.where(x0 + half > 1 - 1e-6, torch.ones_like(hi), hi)
        lo = torch.where(x0 - half < -1 + 1e-6, torch.zeros_like(lo), lo)
        nll = -torch.log((hi - lo).clamp(min=1e-12)).mean()
        torch.testing.assert_close(stats["decoder_nll"][n], nll, rtol=1e-10, atol=0)


def official_even_trajectory(T: int, K: int) -> torch.Tensor:
    """App. F.4: tau_k = round(1 + (k - 1)(N - 1)/(K - 1)) accumulated in floats as the official code, 0-based.

    Differs from bench.core.time_grids.even_grid where a value is a tie: T = 1000, K = 25 gives 167 vs 166 at k = 4.
    """
    stride = (T - 1) / (K - 1)
    steps, cur = [], 1.0
    for _ in range(K):
        steps.append(round(cur) - 1)
        cur += stride
    return torch.tensor(steps, dtype=torch.int64)


def test_even_grid_is_the_official_even_trajectory_except_at_ties():
    assert even_grid(1000, 10).tolist() == official_even_trajectory(1000, 10).tolist()
    t25 = official_even_trajectory(1000, 25)
    assert t25[0] == 0 and t25[-1] == 999 and t25[4] == 167 and t25[12] == 499
    assert even_grid(1000, 25)[4] == 166


# --- the variational bound ---------------------------------------------------------------------------

# Discretised setting: x0 = a diagonal Gaussian rounded to the 256 levels of 8-bit data in [-1, 1]. The
# data then is a discrete distribution on exactly the decoder's bins, so E[L_vb] >= H(data) for any
# model, with H and each image's -log P(x0) in closed form (a product of 1-D bin probabilities). The
# bins (2/255) are fine against the data's scale, so the exact eps of the Gaussian with Sheppard's
# variance C + delta^2/12 is the near-exact network for the rounded data.
LEVELS = 255
NLL_MEAN = torch.tensor([0.1, -0.05], dtype=torch.float64)
NLL_STD = torch.tensor([0.2, 0.3], dtype=torch.float64)


def _rounded(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x + 1) / 2 * LEVELS).clamp(0, LEVELS) / LEVELS * 2 - 1


def _neg_log_prob_bits(x0: torch.Tensor) -> torch.Tensor:
    half = 1.0 / LEVELS
    hi = torch.special.ndtr((x0 + half - NLL_MEAN) / NLL_STD)
    lo = torch.special.ndtr((x0 - half - NLL_MEAN) / NLL_STD)
    hi = torch.where(x0 + half > 1 - 1e-9, torch.ones_like(hi), hi)
    lo = torch.where(x0 - half < -1 + 1e-9, torch.zeros_like(lo), lo)
    return -torch.log(hi - lo).sum(1) / (2 * math.log(2))


@pytest.mark.parametrize("K", [10, 25, 100])
def test_analytic_vlb_bounds_the_exact_nll_and_beats_ddpm_variances(K):
    sheppard = torch.diag(NLL_STD**2 + (2 / LEVELS) ** 2 / 12)[None]
    data = GaussianMixture(torch.ones(1, dtype=torch.float64), NLL_MEAN[None], sheppard)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(data, SCHED, (2,)), SCHED)
    g = torch.Generator().manual_seed(K)
    train, test = _rounded(data.sample(4000, g)), _rounded(data.sample(2000, g))
    grid = even_grid(1000, K)
    gamma = estimate_gamma(den, train, grid[1:], torch.arange(4000) + 10**6)
    seeds = torch.arange(2000)
    analytic = vlb_bits_per_dim_analytic(den, test, grid, seeds, gamma=gamma, max_level=LEVELS)
    gap = analytic - _neg_log_prob_bits(test)  # E[gap] = E[L_vb] - H(data) >= 0
    n = len(gap)
    assert gap.mean() > -4 * gap.std() / math.sqrt(n)
    for variance, bpd in vlb_bits_per_dim(den, test, grid, seeds, max_level=LEVELS, decoder="chain").items():
        diff = analytic - bpd  # paired: same draws and network calls
        assert diff.mean() < -4 * diff.std() / math.sqrt(n), variance


def _decoder_stds(monkeypatch, module) -> list[torch.Tensor]:
    """The standard deviations the bound of ``module`` hands its discretised decoder, recorded per call."""
    seen = []
    original = module.discretized_gaussian_log_likelihood

    def spy(x, mean, std, half_width):
        seen.append(torch.as_tensor(std))
        return original(x, mean, std, half_width)

    monkeypatch.setattr(module, "discretized_gaussian_log_likelihood", spy)
    return seen


def test_analytic_bound_decodes_with_the_full_chains_first_beta_tilde(monkeypatch):
    import bench.methods.analytic
    import bench.metrics.nll

    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    x0 = _rounded(GAUSS.sample(50, torch.Generator().manual_seed(2)).clamp(-1, 1))
    gamma = torch.full((1000,), 0.9, dtype=torch.float64)
    grid = even_grid(1000, 10)
    # elbo.py _sigma2_small(1, 2): beta_2 (1 - abar_1) / (1 - abar_2), 1-based, from the betas themselves
    b = SCHED.betas
    official = float(b[1] * (1 - (1 - b[0])) / (1 - (1 - b[0]) * (1 - b[1])))
    analytic_stds = _decoder_stds(monkeypatch, bench.methods.analytic)
    analytic = vlb_bits_per_dim_analytic(den, x0, grid, torch.arange(50), gamma=gamma, max_level=LEVELS)
    assert float(analytic_stds[0]) ** 2 == pytest.approx(official, rel=1e-12) and torch.isfinite(analytic).all()
    fixed_stds = _decoder_stds(monkeypatch, bench.metrics.nll)
    chain = vlb_bits_per_dim(den, x0, grid, torch.arange(50), max_level=LEVELS, decoder="chain")
    trajectory = vlb_bits_per_dim(den, x0, grid, torch.arange(50), max_level=LEVELS)
    assert float(fixed_stds[0]) ** 2 == pytest.approx(official, rel=1e-12)
    trajectory_var = float((1 - ABAR[0]) / (1 - ABAR[grid[1]]) * (1 - ABAR[grid[1]] / ABAR[0]))
    assert float(fixed_stds[1]) ** 2 == pytest.approx(trajectory_var, rel=1e-12)
    assert trajectory_var > 1.8 * official  # K = 10 on the linear chain: tau_2 = 111
    # only L_0 differs between the two decoders, and the bounds stay paired per image
    for v in ("beta", "beta_tilde"):
        assert not torch.equal(chain[v], trajectory[v])
        torch.testing.assert_close(chain[v] - trajectory[v], chain["beta"] - trajectory["beta"])
    with pytest.raises(ValueError, match=r"decoder variance 'first' is not one of \['trajectory', 'chain'\]"):
        vlb_bits_per_dim(den, x0, grid, torch.arange(50), max_level=LEVELS, decoder="first")


@pytest.mark.parametrize("K", [10, 25])
def test_optimal_trajectory_lowers_the_vlb_of_gaussian_data(K):
    # The DP minimises sum J = (2 / d) E[sum of the KL terms] for the exact eps and its exact gamma, so the
    # bound on the OT is below the bound on the even trajectory (paired: the same images and seeds).
    std = torch.tensor([0.05, 0.08], dtype=torch.float64)
    c = std**2 + (2 / LEVELS) ** 2 / 12
    data = GaussianMixture(torch.ones(1, dtype=torch.float64), NLL_MEAN[None], torch.diag(c)[None])
    den = DiscreteEpsDenoiser(ExactEpsNetwork(data, SCHED, (2,)), SCHED)
    gamma = ((1 - ABAR)[:, None] / (ABAR[:, None] * c + (1 - ABAR)[:, None])).mean(1)  # tr(A_n) / d
    test = _rounded(data.sample(20000, torch.Generator().manual_seed(5)))
    seeds = torch.arange(20000)
    ot = time_grid("optimal", 1000, K, alpha_bars=ABAR, gamma=gamma)
    on_ot = vlb_bits_per_dim_analytic(den, test, ot, seeds, gamma=gamma, max_level=LEVELS, clip_x0=False)
    on_even = vlb_bits_per_dim_analytic(den, test, even_grid(1000, K), seeds, gamma=gamma, max_level=LEVELS,
                                        clip_x0=False)
    diff = on_ot - on_even
    assert diff.mean() < -4 * diff.std() / math.sqrt(len(diff))


# --- samplers ----------------------------------------------------------------------------------------------


def _moment_z_scores(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean error, covariance error) of samples in units of their Monte Carlo standard error."""
    n = x.shape[0]
    xc = x - mean
    prod = xc[:, :, None] * xc[:, None, :]
    z_mean = (x.mean(0) - mean) / torch.sqrt(torch.diag(cov) / n)
    z_cov = (torch.cov(x.T) - cov) / (prod.std(0) / math.sqrt(n))
    return z_mean, z_cov


@pytest.mark.parametrize("sampler", [analytic_ddpm.sample, analytic_ddim.sample])
def test_samplers_are_exact_for_isotropic_gaussian_data(sampler):
    # For C = c I, q(x_s | x_t) is N(., v I): the optimal isotropic reverse step is exact at any K, and
    # the last step returns E[x0 | x_0], whose covariance is c^2 abar_0 / (abar_0 c + bbar_0) I.
    c, m = 0.05, torch.tensor([0.2, -0.1], dtype=torch.float64)
    data = GaussianMixture(torch.ones(1, dtype=torch.float64), m[None], c * torch.eye(2, dtype=torch.float64)[None])
    den = DiscreteEpsDenoiser(ExactEpsNetwork(data, SCHED, (2,)), SCHED)
    gamma = (1 - ABAR) / (ABAR * c + 1 - ABAR)  # closed form for C = c I
    grid = even_grid(1000, 5)
    noise = NoiseSource(torch.arange(20000), (2,), torch.float64, "cpu")
    x = sampler(den, noise.latent(), grid, noise=noise, gamma=gamma, clip_x0=False)
    target = c**2 * ABAR[0] / (ABAR[0] * c + 1 - ABAR[0]) * torch.eye(2, dtype=torch.float64)
    z_mean, z_cov = _moment_z_scores(x, m, target)
    assert z_mean.abs().max() < 5 and z_cov.abs().max() < 5
    # the same check catches the handcrafted variance at this K
    y = ddpm.sample(den, noise.latent(), grid, noise=noise, variance="beta_tilde", clip_x0=False)
    assert _moment_z_scores(y, m, target)[1].abs().max() > 20


def test_analytic_ddpm_reproduces_mixture_moments():
    mixture = GaussianMixture.random(2, 2, seed=3)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(mixture, SCHED, (2,)), SCHED)
    grid = even_grid(1000, 100)
    x0 = mixture.sample(2000, torch.Generator().manual_seed(0))
    gamma = estimate_gamma(den, x0, grid[1:], torch.arange(2000) + 10**6)
    noise = NoiseSource(torch.arange(10000), (2,), torch.float64, "cpu")
    x = analytic_ddpm.sample(den, noise.latent(), grid, noise=noise, gamma=gamma, clip_x0=False)
    z_mean, z_cov = _moment_z_scores(x, mixture.mean(), mixture.cov())
    assert z_mean.abs().max() < 5 and z_cov.abs().max() < 5


@pytest.mark.parametrize("sampler", [analytic_ddpm.sample, analytic_ddim.sample])
def test_a_sample_depends_only_on_its_own_seed(sampler):
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GAUSS, SCHED, (3,)), SCHED)
    grid = even_grid(1000, 10)
    gamma = torch.full((1000,), 0.9, dtype=torch.float64)
    whole = NoiseSource(torch.arange(40), (3,), torch.float64, "cpu")
    part = NoiseSource(torch.arange(40)[11:17], (3,), torch.float64, "cpu")
    kw = {"gamma": gamma, "sigma2_clip_pixel": 1.0}
    a = sampler(den, whole.latent(), grid, noise=whole, **kw)
    b = sampler(den, part.latent(), grid, noise=part, **kw)
    torch.testing.assert_close(a[11:17], b, rtol=1e-12, atol=1e-12)


class _ZeroEps:
    """eps_hat = 0: every reverse step is x_s = c x_t + sigma z, linear in x_t."""

    alpha_bars = ABAR

    def __call__(self, x: torch.Tensor, n: int) -> Prediction:
        self.inputs.append(x.clone())
        return Prediction(eps=torch.zeros_like(x), x0=x / torch.sqrt(ABAR[n]))


class _ConstantNoise:
    """Every z of a reverse step equals ``value``."""

    def __init__(self, value: float):
        self.value = value

    def normal(self, step: int, extra: int = 0) -> torch.Tensor:
        return torch.full((1, 1), self.value, dtype=torch.float64)


@pytest.mark.parametrize("sampler,form", [(analytic_ddpm.sample, "ddpm"), (analytic_ddim.sample, "ddim")])
def test_samplers_realise_the_shared_variances(sampler, form):
    # With z = 1 and z = 0 from the same x_T, the difference D_k of the inputs at step k obeys
    # D_{k-1} = c_k D_k + sigma_k, and c_k is the ratio of consecutive inputs of the z = 0 run.
    g = torch.Generator().manual_seed(11)
    grid = torch.sort(torch.randperm(1000, generator=g)[:12]).values
    grid[0] = 0
    gamma = torch.rand(1000, generator=g, dtype=torch.float64) * 1.4 - 0.2  # outside [0, 1]: Theorem 2 clips
    raw = trajectory_variances(ABAR, grid, gamma, form=form, clip=False)
    assert not torch.equal(raw, trajectory_variances(ABAR, grid, gamma, form=form))
    kw = {"gamma": gamma, "clip_x0": False, "sigma2_clip_pixel": 1, "pixel_quantum": 2 / 16}
    runs = []
    for z in (0.0, 1.0):
        den = _ZeroEps()
        den.inputs = []
        sampler(den, torch.ones(1, 1, dtype=torch.float64), grid, noise=_ConstantNoise(z), **kw)
        runs.append(torch.cat(den.inputs[::-1]).reshape(-1))  # input at grid[k], k = 0..K-1
    still, moved = runs
    diff = moved - still
    sigma = diff[:-1] - still[:-1] / still[1:] * diff[1:]
    expected = sampling_variances(ABAR, grid, gamma, form=form, sigma2_clip_pixel=1, pixel_quantum=2 / 16)
    torch.testing.assert_close(sigma, expected.sqrt(), rtol=1e-9, atol=1e-12)
    assert expected[0] == pixel_variance_threshold(1, 2 / 16)


class _LinearEps:
    """eps_hat = 0.3 x: far from the data, so x0_hat leaves [-1, 1] at large t and clipping matters."""

    alpha_bars = ABAR

    def __call__(self, x: torch.Tensor, n: int) -> Prediction:
        eps = 0.3 * x
        return Prediction(eps=eps, x0=(x - torch.sqrt(1 - ABAR[n]) * eps) / torch.sqrt(ABAR[n]))


def _official_reverse(x: torch.Tensor, grid: torch.Tensor, noise: NoiseSource, move, clip_pixel: float):
    """The official samplers' loop over pairs s < t of the grid: x = move(x, x0 clipped, eps, s, t, z, cap)."""
    net = _LinearEps()
    cap = (clip_pixel * 2.0 / 255.0 * (math.pi / 2.0) ** 0.5) ** 2
    steps = grid.tolist()
    for k in range(len(steps) - 1, 0, -1):
        s, t = steps[k - 1], steps[k]
        eps = net(x, t).eps
        x0 = ((x - (1 - ABAR[t]) ** 0.5 * eps) / ABAR[t] ** 0.5).clamp(-1.0, 1.0)
        # clip_sigma_idx = 1: `if s < ns[1]` caps the move to the first timestep only
        x = move(x, x0, eps, s, t, noise.normal(k), cap if k == 1 else math.inf)
    return net(x, steps[0]).x0.clamp(-1.0, 1.0)


def test_analytic_ddim_combines_the_clipped_x0_with_the_networks_eps():
    # core/inference/sampler/reverse_ddim.py reverse_ddim_ms_eps (eta = 0), written out
    gamma = torch.full((1000,), 0.8, dtype=torch.float64)

    def move(x, x0, eps, s, t, z, cap):
        a_s, a_t = ABAR[s], ABAR[t]
        cov_x0 = ((1 - a_t) / a_t * (1 - gamma[t])).clamp(0.0, 1.0)
        sigma2 = min(float((a_s**0.5 - ((1 - a_s) * a_t / (1 - a_t)) ** 0.5) ** 2 * cov_x0), cap)
        return a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps + sigma2**0.5 * z

    grid = even_grid(1000, 10)
    noise = NoiseSource(torch.arange(64), (3,), torch.float64, "cpu")
    official = _official_reverse(noise.latent(), grid, noise, move, clip_pixel=1)
    kw = {"noise": noise, "gamma": gamma, "sigma2_clip_pixel": 1}
    ours = analytic_ddim.sample(_LinearEps(), noise.latent(), grid, **kw)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)
    recomputed = analytic_ddim.sample(_LinearEps(), noise.latent(), grid, eps_from_clipped_x0=True, **kw)
    assert (recomputed - official).norm() > 0.1 * official.norm()


class _ExpandingEps(_LinearEps):
    """eps_hat = -0.2 x: x0_hat = x (1 + 0.2 sqrt(1 - a)) / sqrt(a) leaves [-1, 1] down to the first timestep."""

    def __call__(self, x: torch.Tensor, n: int) -> Prediction:
        eps = -0.2 * x
        return Prediction(eps=eps, x0=(x - torch.sqrt(1 - ABAR[n]) * eps) / torch.sqrt(ABAR[n]))


def test_ddim_with_the_networks_eps_is_analytic_dpms_quadratic_baseline():
    # core/inference/sampler/reverse_ddim.py reverse_ddim_naive (eta = 0, steps_type quad_ddim), written out: the
    # clipped x0 with the network's eps, also at the quad grid's repeated first timestep (s = r is not skipped there)
    net = _ExpandingEps()
    grid = quad_grid(1000, 35)
    assert grid[:3].tolist() == [0, 0, 2]
    noise = NoiseSource(torch.arange(64), (3,), torch.float64, "cpu")
    x = official = noise.latent()
    steps = grid.tolist()
    for k in range(len(steps) - 1, 0, -1):
        s, pred = steps[k - 1], net(x, steps[k])
        x = ABAR[s] ** 0.5 * pred.x0.clamp(-1.0, 1.0) + (1 - ABAR[s]) ** 0.5 * pred.eps
    official = net(x, steps[0]).x0.clamp(-1.0, 1.0)
    ours = ddim.sample(net, noise.latent(), grid, noise=noise, clip_x0=True, eps_from_clipped_x0=False)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)
    skipped = ddim.sample(net, noise.latent(), grid.unique(), noise=noise, clip_x0=True, eps_from_clipped_x0=False)
    # skipping the repeat instead moves the result by O(1 - a_0) (1e-4 here): small, but not rounding's 1e-16
    assert (skipped - official).abs().max() > 1e-10
    # iDDPM's DDIM (the default) takes the eps implied by the clipped x0 and skips the repeated step as DDIM does.
    iddpm_way = ddim.sample(net, noise.latent(), grid, noise=noise, clip_x0=True)
    assert (iddpm_way - official).abs().max() > 1e-3


def test_ddpm_beta_tilde_on_the_quad_grid_is_analytic_dpms_quadratic_baseline():
    # core/inference/sampler/reverse_ddpm.py reverse_ddpm_naive, small_sigma=True, no sigma clip, steps_type quad_ddim:
    # at a repeated timestep skip_beta = 0, so its mean is x and its sigma 0, as our zero-length step
    def move(x, x0, eps, s, t, z, cap):
        skip_beta = 1 - ABAR[t] / ABAR[s]
        mean = skip_beta * ABAR[s] ** 0.5 / (1 - ABAR[t]) * x0 + (1 - skip_beta) ** 0.5 * (1 - ABAR[s]) / (1 - ABAR[t]) * x
        return mean + float(skip_beta * (1 - ABAR[s]) / (1 - ABAR[t])) ** 0.5 * z

    grid = quad_grid(1000, 90)
    assert len(grid.unique()) < len(grid)
    noise = NoiseSource(torch.arange(64), (3,), torch.float64, "cpu")
    official = _official_reverse(noise.latent(), grid, noise, move, clip_pixel=math.inf)
    ours = ddpm.sample(_LinearEps(), noise.latent(), grid, noise=noise, variance="beta_tilde", clip_x0=True)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)


def test_ddpm_clips_sigma_of_the_last_noisy_move_as_the_official_beta_runs():
    # core/inference/sampler/reverse_ddpm.py reverse_ddpm_naive, small_sigma=False, clip_sigma_idx=1, clip_pixel=1
    def move(x, x0, eps, s, t, z, cap):
        skip_beta = 1 - ABAR[t] / ABAR[s]
        mean = skip_beta * ABAR[s] ** 0.5 / (1 - ABAR[t]) * x0 + (1 - skip_beta) ** 0.5 * (1 - ABAR[s]) / (1 - ABAR[t]) * x
        return mean + min(float(skip_beta), cap) ** 0.5 * z

    grid = even_grid(1000, 10)
    noise = NoiseSource(torch.arange(64), (3,), torch.float64, "cpu")
    official = _official_reverse(noise.latent(), grid, noise, move, clip_pixel=1)
    ours = ddpm.sample(_LinearEps(), noise.latent(), grid, noise=noise, clip_sigma_idx=1, clip_pixel=1)
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)
    unclipped = ddpm.sample(_LinearEps(), noise.latent(), grid, noise=noise)
    assert (unclipped - official).abs().max() > 0.01
    with pytest.raises(ValueError, match=r"clip_sigma_idx=10 must be an integer in \[0, K=10\)"):
        ddpm.sample(_LinearEps(), noise.latent(), grid, noise=noise, clip_sigma_idx=10, clip_pixel=1)
    with pytest.raises(ValueError, match=r"clip_sigma_idx=1 caps sigma at clip_pixel pixels: give clip_pixel"):
        ddpm.sample(_LinearEps(), noise.latent(), grid, noise=noise, clip_sigma_idx=1)


def test_a_cell_records_its_samplers_conventions():
    from bench.samplers import resolved_options

    assert resolved_options("analytic_ddim", {"gamma": torch.zeros(3), "clip": True}) == {
        "clip": True,
        "sigma2_clip_pixel": None,
        "pixel_quantum": PAPER_PIXEL_QUANTUM,
        "clip_x0": True,
        "eps_from_clipped_x0": False,
    }
    assert resolved_options("ddpm", {"clip_sigma_idx": 1, "clip_pixel": 1})["clip_sigma_idx"] == 1
    assert resolved_options("ddpm", {})["clip_sigma_idx"] == 0


# --- the moments artifact ------------------------------------------------------------------------------------


def test_moments_round_trip_and_refuse_another_model(tmp_path):
    net = MLPDenoiser(width=16, depth=1, emb_dim=8)
    h = model_hash(net)
    assert h == model_hash(net) and len(h) == 16
    gamma = torch.linspace(0, 1, 1000, dtype=torch.float64)
    path = save_moments(tmp_path / "m.npz", gamma, model_hash=h, n_samples=1437, seed=3, gamma_sem=gamma / 100)
    got = load_moments(path, model_hash=h)
    assert torch.equal(got.gamma, gamma) and torch.equal(got.gamma_sem, gamma / 100)
    assert (got.model_hash, got.n_samples, got.seed, got.bound_terms) == (h, 1437, 3, None)
    terms = BoundTerms(gamma / 10, gamma + 1)
    with_terms = load_moments(save_moments(tmp_path / "t.npz", gamma, model_hash=h, n_samples=9, seed=3, bound_terms=terms))
    assert torch.equal(with_terms.bound_terms.recon, terms.recon)
    assert torch.equal(with_terms.bound_terms.decoder_nll, terms.decoder_nll)
    with torch.no_grad():
        net.out.bias[0] += 1.0
    other = model_hash(net)
    assert other != h
    with pytest.raises(ValueError, match=f"estimated for model {h}, not for model {other}"):
        load_moments(path, model_hash=other)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError, match="bad.npz"):
        load_moments(tmp_path / "bad.npz")
