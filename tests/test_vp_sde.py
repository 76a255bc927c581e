"""score-SDE's VP SDE: the VP view of a sigma-space denoiser and Euler-Maruyama, against exact Gaussian-mixture oracles."""

import math

import pytest
import torch
from torch import nn

from bench.core.denoiser import VPTimeScore
from bench.core.noise import NoiseSource
from bench.core.vp_schedule import VPSDE
from bench.data.gaussian_mixture import GaussianMixture
from bench.methods.edm import EDMNetworkDenoiser
from bench.samplers import get_sampler
from bench.samplers.validation import SamplerConfigError, check_grid_options
from bench.samplers.vp_sde import euler_maruyama, probability_flow
from bench.steps.sample import generate, sampler_view

N = 2000
SHAPE = (2,)


pytestmark = pytest.mark.usefixtures("fast_distributions")


MIX = GaussianMixture.random(3, 2, seed=1)
GAUSS = GaussianMixture(
    torch.ones(1, dtype=torch.float64),
    torch.tensor([[0.3, -0.2]], dtype=torch.float64),
    torch.tensor([[[0.06, 0.02], [0.02, 0.03]]], dtype=torch.float64),
)
# The sigma range of EDM's VPPrecond (beta_d = 19.9, beta_min = 0.1, epsilon_t = 1e-5).
VP_RANGE = (float(VPSDE().sigma(1e-5)), float(VPSDE().sigma(1.0)))


class ExactSigmaNet(nn.Module):
    """An EDM-space network that is exact for a mixture: D(x; sigma) = x + sigma^2 grad log p_sigma(x)."""

    def __init__(self, mixture: GaussianMixture, sigma_min: float, sigma_max: float):
        super().__init__()
        self.mixture = mixture
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._dummy = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(()) ** 2
        return x + s2 * self.mixture.noised(1.0, s2).score(x.reshape(x.shape[0], -1)).reshape(x.shape)


def exact_denoiser(mixture=MIX, sigma_range=VP_RANGE) -> EDMNetworkDenoiser:
    return EDMNetworkDenoiser(ExactSigmaNet(mixture, *sigma_range))


def moment_z(x: torch.Tensor, target: GaussianMixture) -> tuple[float, float]:
    """Largest |error| of mean and covariance in units of their Monte-Carlo standard errors."""
    mu, cov = target.mean(), target.cov()
    se_mu = torch.sqrt(torch.diag(cov) / len(x))
    se_cov = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / len(x))
    return ((x.mean(0) - mu).abs() / se_mu).max().item(), ((torch.cov(x.T) - cov).abs() / se_cov).max().item()


def run_em(score_fn, grid, n=N, **opts):
    noise = NoiseSource(torch.arange(n), SHAPE, torch.float64, "cpu")
    return euler_maruyama(score_fn, score_fn.prior(noise, grid), grid, noise=noise, **opts)


# ---------------------------------------------------------------------------------------------
# The SDE and its grid


def test_vp_sde_marginal_matches_edm_vp_sigma():
    sde = VPSDE(0.1, 20.0)
    t = torch.linspace(1e-5, 1.0, 50, dtype=torch.float64)
    # sigma^2 = 1 / s^2 - 1 and EDM's sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), beta_d = 19.9.
    torch.testing.assert_close(sde.sigma(t) ** 2, sde.scale(t) ** -2 - 1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sde.sigma(t), torch.sqrt(torch.expm1(0.5 * 19.9 * t**2 + 0.1 * t)), rtol=1e-14, atol=0)
    # d/dt log(1 + sigma^2) = beta(t).
    h = 1e-6
    slope = (torch.log1p(sde.sigma(t + h) ** 2) - torch.log1p(sde.sigma(t - h) ** 2)) / (2 * h)
    torch.testing.assert_close(slope, sde.beta(t), rtol=1e-7, atol=0)


def test_time_grid_reproduces_score_sde_steps_at_n_1000():
    """linspace(1, 1e-3, 1000) then 0: every step is score-SDE's dt = -1/N."""
    times = VPSDE().time_grid(1000, 1e-3)
    assert times.shape == (1001,) and times[0] == 1.0 and times[-2] == 1e-3 and times[-1] == 0.0
    torch.testing.assert_close(times[:-1] - times[1:], torch.full((1000,), 1e-3, dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize(("K", "eps"), [(1, 1e-3), (10, 0.0), (10, 1.0)])
def test_bad_time_grids_are_refused(K, eps):
    with pytest.raises(ValueError):
        VPSDE().time_grid(K, eps)


def test_bad_sde_and_grid_options_are_refused():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(0.0, 20.0)
    with pytest.raises(SamplerConfigError, match="unknown option 'rho'"):
        check_grid_options("s", {"grid": "vp_sde", "grid_options": {"beta_min": 0.1, "rho": 7}})
    with pytest.raises(SamplerConfigError, match="eps"):
        check_grid_options("s", {"grid": "vp_sde", "grid_options": {"eps": 2.0}})
    with pytest.raises(SamplerConfigError, match="beta_min"):
        check_grid_options("s", {"grid": "vp_sde", "grid_options": {"beta_min": 30.0}})
    check_grid_options("s", {"grid": "vp_sde", "grid_options": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}})


# ---------------------------------------------------------------------------------------------
# The VP view of a sigma-space denoiser


def test_vp_view_of_an_exact_denoiser_is_the_exact_vp_score():
    sde = VPSDE()
    score = VPTimeScore(exact_denoiser(), sde)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (1e-3, 0.05, 0.4, 1.0):
        s = sde.scale(t)
        want = MIX.noised(s, 1 - s**2).score(x)
        torch.testing.assert_close(score(x, t), want, rtol=1e-9, atol=1e-9)
    assert score.nfe == 4


def test_vp_view_of_an_eps_denoiser_is_minus_eps_over_std():
    """EDM's VPPrecond form D = x - sigma eps gives score-SDE's own score = -eps / std."""
    eps = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    class EpsDenoiser:
        sigma_min, sigma_max = VP_RANGE
        nfe = 0

        def __call__(self, x, sigma):
            return x - sigma * eps

    sde = VPSDE()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = 0.3
    std = torch.sqrt(1 - sde.scale(t) ** 2)
    torch.testing.assert_close(VPTimeScore(EpsDenoiser(), sde)(x, t), -eps / std, rtol=1e-12, atol=1e-12)


def test_vp_view_refuses_times_outside_the_denoiser_range():
    """EDM's own models stop at sigma_max = 80, below the VP SDE's sigma(1) = 152."""
    score = VPTimeScore(exact_denoiser(sigma_range=(0.002, 80.0)), VPSDE())
    with pytest.raises(ValueError, match="outside the denoiser's range"):
        score(torch.zeros(2, 2, dtype=torch.float64), 1.0)


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama


def _gauss_score_affine(sde: VPSDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VP score of GAUSS at t as P (s m - x): returns (P, s m)."""
    s = sde.scale(t)
    cov = s**2 * GAUSS.covs[0] + (1 - s**2) * torch.eye(2, dtype=torch.float64)
    return torch.linalg.inv(cov), s * GAUSS.means[0]


@pytest.mark.parametrize("denoise", [True, False])
def test_euler_maruyama_on_a_gaussian_has_the_exact_law_of_its_steps(denoise):
    """With one Gaussian every EM step is affine: the output law follows in closed form (coarse grid, so
    the discretisation error is large and the test sees each coefficient)."""
    sde = VPSDE()
    grid = sde.time_grid(12, 1e-3)
    eye = torch.eye(2, dtype=torch.float64)
    mu, V = torch.zeros(2, dtype=torch.float64), eye.clone()
    for k in range(len(grid) - 1):
        t = grid[k]
        bh = sde.beta(t) / 12
        P, sm = _gauss_score_affine(sde, t)
        A = (1 + 0.5 * bh) * eye - bh * P
        mu = A @ mu + bh * P @ sm
        last = k == len(grid) - 2
        V = A @ V @ A.T + (0.0 if (last and denoise) else bh) * eye
    score = VPTimeScore(exact_denoiser(GAUSS), sde)
    x = run_em(score, grid, denoise=denoise)
    assert score.nfe == 12
    target = GaussianMixture(GAUSS.weights, mu[None], V[None])
    assert max(moment_z(x, target)) < 4.5
    # The coarse chain is far from the data law: the test can tell the two apart.
    assert max(moment_z(x, GAUSS)) > 10


def test_euler_maruyama_steps_by_score_sdes_dt_of_one_over_K():
    """score-SDE's EulerMaruyamaPredictor (sampling.py L182-L186) with N = K = 5: dt = -1/5 at every one of
    the times linspace(1, eps, 5), not the grid's spacing (1 - eps)/4 and a last step of eps."""
    sde = VPSDE()
    grid = sde.time_grid(5, 1e-3)
    score = VPTimeScore(exact_denoiser(GAUSS), sde)
    noise = NoiseSource(torch.arange(8), SHAPE, torch.float64, "cpu")
    x_T = noise.latent()
    got = euler_maruyama(score, x_T, grid, noise=noise, denoise=False)
    x = x_T
    for k, t in enumerate(torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)):
        drift = -0.5 * sde.beta(t) * x - sde.beta(t) * score(x, t)
        x = x - drift / 5 + torch.sqrt(sde.beta(t) / 5) * noise.normal(k)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_euler_maruyama_with_many_steps_reproduces_the_mixture():
    score = VPTimeScore(exact_denoiser(), VPSDE())
    x = run_em(score, VPSDE().time_grid(500, 1e-3))
    assert max(moment_z(x, MIX)) < 4.5


def test_euler_maruyama_refuses_a_bad_grid():
    score = VPTimeScore(exact_denoiser(), VPSDE())
    noise = NoiseSource(torch.arange(4), SHAPE, torch.float64, "cpu")
    with pytest.raises(ValueError, match="descending"):
        euler_maruyama(score, noise.latent(), torch.tensor([0.5, 0.7, 0.0]), noise=noise)


# ---------------------------------------------------------------------------------------------
# Through the DAG's sampler view, on an edm-family denoiser (how EDM's score-SDE conversions run)

EM_VP = {"fn": "vp_euler_maruyama", "grid": "vp_sde", "grid_options": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}}
PC_VE = {"fn": "pc", "grid": "ve", "options": {"snr": 0.16, "n_steps_each": 0, "denoise": True}}


def test_sampler_view_gives_the_vp_view_and_score_sde_times():
    view, grid = sampler_view(exact_denoiser(), EM_VP, 1000)
    assert isinstance(view, VPTimeScore) and view.sde == VPSDE(0.1, 20.0)
    torch.testing.assert_close(grid, VPSDE().time_grid(1000, 1e-3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside the denoiser's range"):
        sampler_view(exact_denoiser(sigma_range=(0.002, 80.0)), EM_VP, 1000)


def test_generate_vp_euler_maruyama_on_an_edm_denoiser():
    den = exact_denoiser()
    x, grid = generate(den, EM_VP, 400, torch.arange(N), SHAPE, batch_size=1000)
    assert den.nfe == 2 * 400  # two batches, one call per step
    assert len(grid) == 401
    assert max(moment_z(x, MIX)) < 4.5


def test_generate_pc_on_an_edm_ve_denoiser_uses_its_levels():
    """The VE view of an EDM-space denoiser (score = (D - x) / sigma^2) on K geometric levels of its range."""
    den = exact_denoiser(sigma_range=(0.02, 100.0))
    x, levels = generate(den, PC_VE, 300, torch.arange(N), SHAPE, batch_size=N)
    assert den.nfe == 300
    assert levels[0] == pytest.approx(100.0) and levels[-1] == pytest.approx(0.02)
    ratios = levels[1:] / levels[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, math.exp(math.log(0.02 / 100.0) / 299)))
    assert max(moment_z(x, MIX)) < 4.5


def test_samples_depend_only_on_their_own_seed():
    den = exact_denoiser()
    a, _ = generate(den, EM_VP, 50, torch.arange(10), SHAPE, batch_size=10)
    b, _ = generate(den, EM_VP, 50, torch.arange(5, 10), SHAPE, batch_size=3)
    torch.testing.assert_close(a[5:], b, rtol=1e-12, atol=1e-12)
    assert get_sampler("vp_euler_maruyama") is euler_maruyama


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE sampler


def _gauss_cov(sde: VPSDE, t) -> torch.Tensor:
    s = sde.scale(torch.as_tensor(t, dtype=torch.float64))
    return s**2 * GAUSS.covs[0] + (1 - s**2) * torch.eye(2, dtype=torch.float64)


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return vecs @ torch.diag(vals.sqrt()) @ vecs.T


def test_discrete_beta_is_score_sde_first_discrete_beta():
    # eps = 1e-3, N = 1000: index floor(0.999) = 0, beta_min / N.
    assert VPSDE().discrete_beta(1e-3, 1000) == pytest.approx(1e-4, rel=1e-12)
    # index 1 of linspace(beta_min / N, beta_max / N, N).
    want = float(torch.linspace(0.1 / 100, 20.0 / 100, 100, dtype=torch.float64)[1])
    assert VPSDE().discrete_beta(0.015, 100) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("denoise", [False, True])
def test_probability_flow_on_a_gaussian_is_the_exact_linear_flow(denoise):
    """For one Gaussian the PF-ODE map from t = 1 to eps is x -> s_e m + C_e^(1/2) C_1^(-1/2) (x - s_1 m), C_t the
    marginal covariances (which commute); each sample must land there within the solver's tolerance."""
    sde = VPSDE()
    grid = sde.time_grid(1000, 1e-3)
    score = VPTimeScore(exact_denoiser(GAUSS), sde)
    noise = NoiseSource(torch.arange(64), SHAPE, torch.float64, "cpu")
    x_T = noise.latent()
    got = probability_flow(score, x_T, grid, noise=noise, rtol=1e-7, atol=1e-7, denoise=denoise)
    m = GAUSS.means[0]
    A = _sqrtm(_gauss_cov(sde, 1e-3)) @ torch.linalg.inv(_sqrtm(_gauss_cov(sde, 1.0)))
    want = sde.scale(1e-3) * m + (x_T - sde.scale(1.0) * m) @ A.T
    if denoise:
        b = 1e-4
        P = torch.linalg.inv(_gauss_cov(sde, 1e-3))
        want = (2 - math.sqrt(1 - b)) * want + b * (sde.scale(1e-3) * m - want) @ P.T
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    assert 20 < score.nfe < 2000


def test_probability_flow_denoises_with_score_sdes_n_1000_at_every_K():
    """The solve spans t = 1 .. eps whatever K; the denoising step's beta is score-SDE's sde.N = 1000 one
    (beta_min / 1000 at eps = 1e-3), not beta_min / K."""
    sde = VPSDE()
    score = VPTimeScore(exact_denoiser(GAUSS), sde)
    noise = NoiseSource(torch.arange(16), SHAPE, torch.float64, "cpu")
    x_T = noise.latent()
    ode = {"noise": noise, "rtol": 1e-5, "atol": 1e-5}
    at_1000 = probability_flow(score, x_T, sde.time_grid(1000, 1e-3), **ode)
    torch.testing.assert_close(probability_flow(score, x_T, sde.time_grid(10, 1e-3), **ode), at_1000, rtol=0, atol=0)
    solved = probability_flow(score, x_T, sde.time_grid(10, 1e-3), denoise=False, **ode)
    b = 1e-4
    torch.testing.assert_close(at_1000, (2 - math.sqrt(1 - b)) * solved + b * score(solved, 1e-3), rtol=1e-12, atol=1e-12)


def test_probability_flow_reproduces_the_mixture_through_the_sampler_view():
    den = exact_denoiser()
    ode = {"fn": "vp_probability_flow", "grid": "vp_sde", "options": {"rtol": 1e-5, "atol": 1e-5}}
    x, grid = generate(den, ode, 1000, torch.arange(N), SHAPE, batch_size=N)
    assert len(grid) == 1001 and den.nfe > 20
    assert max(moment_z(x, MIX)) < 4.5


# ---------------------------------------------------------------------------------------------
# The DAG's sampling job on EDM's real preconditioners (small SongUNets, random weights)


@pytest.mark.parametrize(
    ("precond", "sampler", "K", "nfe"),
    [
        ("VPPrecond", EM_VP, 4, 4),
        ("VPPrecond", {**EM_VP, "fn": "vp_probability_flow", "options": {"rtol": 1e-2, "atol": 1e-2}}, 1000, None),
        ("VEPrecond", {**PC_VE, "options": {"snr": 0.16, "n_steps_each": 1, "corrector": "langevin"}}, 4, 8),
    ],
    ids=["vp-em", "vp-ode", "ve-pc"],
)
def test_sample_shard_runs_score_sde_samplers_on_edm_preconditioners(tmp_path, precond, sampler, K, nfe):
    import numpy as np

    from bench.methods.edm import EDMSchedule
    from bench.nets.edm_networks import build_edm_network
    from bench.perf.cells import redraw_zero_parameters
    from bench.steps.sample import sample_shard

    torch.manual_seed(0)
    net = build_edm_network(dict(
        class_name=precond, model_type="SongUNet", img_resolution=8, img_channels=3, model_channels=16,
        channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
    )).eval()
    # SongUNet zero-initialises its output layers: with them the score is exactly 0 in float32 and the
    # Langevin corrector's step (snr |z| / |score|)^2 is infinite, as in score-SDE's.
    redraw_zero_parameters(net)
    out = sample_shard(
        net, EDMSchedule(0.002, 80.0), sampler, K, 0, 3, base_seed=0, shape=(3, 8, 8), max_level=255,
        batch_size=3, out_path=tmp_path / "shard.npz", context="test", family="edm",
    )
    record = np.load(out)
    assert "error" not in record and record["images"].shape == (3, 3, 8, 8)
    if nfe is None:
        assert record["nfe"] > 5
    else:
        assert record["nfe"] == nfe
