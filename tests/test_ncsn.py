"""NCSN / score-SDE VE family: levels, score adapters, DSM loss, annealed Langevin and PC against exact oracles."""

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bench.core.denoiser import ScoreFn, VEDenoiserScore, as_level, ascending_table, param_dtype
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, alpha_bar_of_sigma, sigma_of_alpha_bar, timestep_of_sigma
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.ncsn import (
    NETWORK_TIME_SCALE,
    VENetworkScore,
    VESchedule,
    dsm_loss,
    geometric_sigmas,
    ssm_loss,
)
from bench.methods.ncsn_levels import NoiseConditionalScore
from bench.nets.ncsnv2 import NCSNv2
from bench.samplers import langevin, pc

N = 2000
SHAPE = (2,)


pytestmark = pytest.mark.usefixtures("fast_distributions")


# A score adapter the pipeline does not load (a VP eps network read at VE levels) beside NCSNv2's level-indexed
# one (bench.methods.ncsn_levels): ScoreFn conversions checked against the oracle.


class VPEpsScore:
    """Score of a discrete VP eps network at a VE level: x_vp = sqrt(abar) x, score = -eps(x_vp, n(sigma)) / sigma.

    abar = 1 / (1 + sigma^2) and the (continuous) step n(sigma) come from bench.core.schedules, the one
    sigma <-> timestep conversion (x_vp / sqrt(abar) = x0 + sigma eps, EDM Eq. 4); levels outside the chain's
    [sigma(0), sigma(T-1)] are refused. The default level table is the chain's own sigma(n).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: DiscreteSchedule,
        *,
        time_scale: float = 1.0,
        sigmas: torch.Tensor | None = None,
        rtol: float = 1e-9,
    ):
        self.net = net
        self.schedule = schedule
        self.time_scale = time_scale
        chain = sigma_of_alpha_bar(schedule.alpha_bars)
        self._lo, self._hi = float(chain[0]) * (1 - rtol), float(chain[-1]) * (1 + rtol)
        self.sigmas = chain if sigmas is None else ascending_table(sigmas)
        if self.sigmas[0] < self._lo or self.sigmas[-1] > self._hi:
            raise ValueError(
                f"level table [{float(self.sigmas[0])!r}, {float(self.sigmas[-1])!r}] exceeds the chain's "
                f"sigma range [{float(chain[0])!r}, {float(chain[-1])!r}]"
            )
        self.nfe = 0
        self._dtype = param_dtype(net)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        if not self._lo <= float(s) <= self._hi:
            raise ValueError(
                f"sigma={float(s)!r} lies outside the VP chain's sigma range [{self._lo!r}, {self._hi!r}]"
            )
        n = timestep_of_sigma(self.schedule, s)
        abar = alpha_bar_of_sigma(s)
        t = torch.full((x.shape[0],), float(n) * self.time_scale, dtype=self._dtype, device=x.device)
        eps = self.net((torch.sqrt(abar) * x).to(self._dtype), t).to(x.dtype)
        self.nfe += 1
        return -eps / s


@pytest.fixture(scope="module")
def mix() -> GaussianMixture:
    return GaussianMixture.random(3, 2, seed=1)


class ExactVEScore:
    """grad log p_sigma of a Gaussian mixture, p_sigma = law of x0 + sigma z (the oracle ScoreFn)."""

    def __init__(self, mixture: GaussianMixture, sigmas: torch.Tensor):
        self.mixture = mixture
        self.sigmas = sigmas
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.nfe += 1
        s2 = torch.as_tensor(sigma, dtype=torch.float64) ** 2
        return self.mixture.noised(1.0, s2).score(x.reshape(x.shape[0], -1)).reshape(x.shape)


class ExactUnitIntervalNet(nn.Module):
    """An NCSNv2-like exact network: data in [0, 1] (x_net = (x + 1) / 2), levels indexed by y, descending."""

    def __init__(self, mixture: GaussianMixture, net_sigmas: torch.Tensor):
        super().__init__()
        self.mixture = GaussianMixture(mixture.weights, 0.5 * mixture.means + 0.5, 0.25 * mixture.covs)
        self.register_buffer("sigmas", net_sigmas)
        self._dummy = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert torch.all(y == y[0]) and y.dtype == torch.int64
        return self.mixture.noised(1.0, self.sigmas[y[0]] ** 2).score(x)


def moment_z(x: torch.Tensor, target: GaussianMixture) -> tuple[float, float]:
    """Largest |error| of mean and covariance in units of their Monte-Carlo standard errors."""
    mu, cov = target.mean(), target.cov()
    se_mu = torch.sqrt(torch.diag(cov) / len(x))
    se_cov = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / len(x))
    z_mu = ((x.mean(0) - mu).abs() / se_mu).max().item()
    z_cov = ((torch.cov(x.T) - cov).abs() / se_cov).max().item()
    return z_mu, z_cov


def run(sampler, score_fn, grid, n=N, seed0=0, **opts):
    noise = NoiseSource(torch.arange(seed0, seed0 + n), SHAPE, torch.float64, "cpu")
    x_T = score_fn.sigmas[grid[-1]] * noise.latent()
    return sampler(score_fn, x_T, grid, noise=noise, **opts)


# ---------------------------------------------------------------------------------------------
# Levels


def test_geometric_sigmas_have_constant_ratio_and_exact_ends():
    s = geometric_sigmas(0.01, 50.0, 11)
    assert s.dtype == torch.float64 and s.shape == (11,)
    assert s[0].item() == 0.01 and s[-1].item() == 50.0
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000.0 ** (1 / 10)), rtol=1e-13, atol=0)
    sch = VESchedule(0.01, 50.0)
    torch.testing.assert_close(sch.sigma_of_time(sch.time_of_sigma(s)), s, rtol=1e-14, atol=0)


def test_bad_levels_are_rejected():
    with pytest.raises(ValueError, match="L=1 must be an integer >= 2"):
        geometric_sigmas(0.1, 1.0, 1)
    with pytest.raises(ValueError, match="sigma_min=2.0, sigma_max=1.0"):
        VESchedule(2.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Adapters


def test_score_adapters_agree_on_an_exact_model(mix):
    """Exact score vs VE denoiser vs VP eps through the sigma conversion vs a [0, 1]-data level net."""
    sch = DiscreteSchedule.named("linear", 1000)
    chain = sigma_of_alpha_bar(sch.alpha_bars)
    steps = [0, 37, 250, 600, 999]
    levels = chain[steps]

    exact = ExactVEScore(mix, chain)

    def denoiser(x, sigma):
        return x + sigma**2 * exact(x, sigma)

    ve = VEDenoiserScore(denoiser, chain)
    vp = VPEpsScore(ExactEpsNetwork(mix, sch, SHAPE), sch)
    net_sigmas = torch.flip(levels, [0]) / 2.0  # the network's own (descending, [0, 1]-scale) table
    nc = NoiseConditionalScore(ExactUnitIntervalNet(mix, net_sigmas), net_sigmas, data_range=(0.0, 1.0))
    torch.testing.assert_close(nc.sigmas, levels, rtol=1e-15, atol=0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.7
    for sigma in levels:
        xs = x * torch.sqrt(1 + sigma**2)  # points where each level's density is not negligible
        ref = exact(xs, sigma)
        for fn in (ve, vp, nc):
            got = fn(xs, sigma)
            assert got.dtype == torch.float64
            err = (torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref)).item()
            assert err < 1e-10, (type(fn).__name__, float(sigma), err)
    assert ve.nfe == vp.nfe == nc.nfe == len(levels)
    for fn in (exact, ve, vp, nc):
        assert isinstance(fn, ScoreFn)


def test_noise_conditional_score_scales_ncsnv2_data_to_unit_interval():
    """The NCSNv2 adapter feeds (x + 1) / 2, halves the score and doubles the levels."""
    torch.manual_seed(0)
    net = NCSNv2(ngf=4, num_classes=5, sigma_begin=1.0, sigma_end=0.01, channels=1, image_size=8).double().eval()
    fn = NoiseConditionalScore(net, net.sigmas, data_range=(0.0, 1.0))
    torch.testing.assert_close(fn.sigmas, torch.flip(net.sigmas, [0]) * 2.0, rtol=0, atol=0)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        got = fn(x, fn.sigmas[1])  # second-smallest level = network index 3
        want = net((x + 1) / 2, torch.full((3,), 3, dtype=torch.int64)) / 2
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="is not one of the network's 5 levels"):
        fn(x, 0.5)


def test_vp_eps_score_refuses_levels_outside_the_chain(mix):
    sch = DiscreteSchedule.named("linear", 1000)
    vp = VPEpsScore(ExactEpsNetwork(mix, sch, SHAPE), sch)
    with pytest.raises(ValueError, match="outside the VP chain's sigma range"):
        vp(torch.zeros(2, 2, dtype=torch.float64), 1e-4)
    with pytest.raises(ValueError, match="exceeds the chain's sigma range"):
        VPEpsScore(ExactEpsNetwork(mix, sch, SHAPE), sch, sigmas=geometric_sigmas(0.01, 500.0, 10))


def test_dsm_loss_at_the_exact_score_equals_its_closed_form():
    """For data N(m, c I): F* = sigma s*, and 1/2 E||F* + z||^2 = d/2 E_t[c / (c + sigma(t)^2)] (NCSN DSM, weight sigma^2)."""
    c, d = 0.05, 4
    m = torch.linspace(-0.5, 0.5, d, dtype=torch.float64)
    sched = VESchedule(0.01, 5.0)

    class ExactF(nn.Module):
        def forward(self, x, t):
            sigma = sched.sigma_of_time(t.to(torch.float64) / NETWORK_TIME_SCALE)[:, None]
            return -sigma * (x - m) / (c + sigma**2)

    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        x0 = m + math.sqrt(c) * torch.randn(512, d, generator=gen, dtype=torch.float64)
        losses.append(dsm_loss(ExactF(), sched, x0, gen).item())
    b = 2 * math.log(sched.sigma_max / sched.sigma_min)
    closed = 0.5 * d * (1 - math.log((c + sched.sigma_max**2) / (c + sched.sigma_min**2)) / b)
    losses = torch.tensor(losses)
    se = losses.std().item() / math.sqrt(len(losses))
    assert abs(losses.mean().item() - closed) < 4 * se, (losses.mean().item(), closed, se)
    # The same network read through VENetworkScore is the exact score at any level.
    score = VENetworkScore(ExactF(), sched, levels=7)
    x = torch.randn(5, d, generator=gen, dtype=torch.float64)
    for sigma in score.sigmas:
        torch.testing.assert_close(score(x, sigma), -(x - m) / (c + sigma**2), rtol=1e-12, atol=0)


def test_ssm_loss_of_a_linear_score_on_gaussian_data_equals_its_closed_form():
    """s(x, sigma) = -A x on x0 ~ N(0, S): x~ ~ N(0, S + sigma^2 I), and the VR objective
    sigma^2 [1/2 ||s||^2 + v^T J v] has mean E_t[sigma^2 (1/2 tr(A^T A (S + sigma^2 I)) - tr A)]."""
    d = 3
    A = torch.tensor([[1.0, 0.3, 0.0], [-0.2, 0.8, 0.1], [0.0, 0.4, 1.5]], dtype=torch.float64)
    L = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.3, 0.0], [-0.1, 0.1, 0.4]], dtype=torch.float64)
    S = L @ L.T
    sched = VESchedule(0.2, 1.0)

    class LinearF(nn.Module):
        def forward(self, x, t):
            sigma = sched.sigma_of_time(t.to(torch.float64) / NETWORK_TIME_SCALE)[:, None]
            return -sigma * x @ A.T

    gen = torch.Generator().manual_seed(0)
    losses = torch.tensor([
        ssm_loss(LinearF(), sched, torch.randn(512, d, generator=gen, dtype=torch.float64) @ L.T, gen).item()
        for _ in range(200)
    ])
    # E[sigma^(2k)] for log-uniform sigma: sigma_min^(2k) (r^(2k) - 1) / (2k ln r), r = sigma_max / sigma_min.
    r = sched.sigma_max / sched.sigma_min

    def moment(k):
        return sched.sigma_min ** (2 * k) * (r ** (2 * k) - 1) / (2 * k * math.log(r))

    AtA = A.T @ A
    closed = moment(1) * (0.5 * torch.trace(AtA @ S).item() - torch.trace(A).item()) + moment(2) * 0.5 * torch.trace(AtA).item()
    se = losses.std().item() / math.sqrt(len(losses))
    assert abs(losses.mean().item() - closed) < 4 * se, (losses.mean().item(), closed, se)


def test_ssm_and_dsm_learn_the_exact_score_of_a_noised_mixture(mix):
    """A small MLP trained at one sigma by either objective lands near sigma grad log p_sigma (oracle) and
    near the other; the exact score at another sigma is far from it (the check can fail)."""
    sigma = 0.3

    class OneSigma:
        def sigma_of_time(self, t):
            return torch.full_like(t, sigma)

    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

        def forward(self, x, t):
            return self.f(x)

    def train(loss_fn):
        torch.manual_seed(0)
        net = F().double()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(600):
            loss = loss_fn(net, OneSigma(), mix.sample(256, gen), gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    noised = mix.noised(1.0, sigma**2)
    x = noised.sample(4000, torch.Generator().manual_seed(5))
    want = sigma * noised.score(x)

    def rel_err(got):
        return (((got - want) ** 2).sum(1).mean() / (want**2).sum(1).mean()).item()

    nets = train(dsm_loss), train(ssm_loss)
    with torch.no_grad():
        dsm, ssm = (net(x, None) for net in nets)
    assert rel_err(dsm) < 0.05 and rel_err(ssm) < 0.05, (rel_err(dsm), rel_err(ssm))
    assert (((ssm - dsm) ** 2).sum(1).mean() / (want**2).sum(1).mean()).item() < 0.05
    assert rel_err(sigma * mix.noised(1.0, 0.6**2).score(x)) > 0.2


# ---------------------------------------------------------------------------------------------
# Samplers


def test_annealed_langevin_reproduces_the_mixture(mix):
    """Without denoising the chain targets p_{sigma_L} = mixture * N(0, sigma_L^2 I)."""
    levels = geometric_sigmas(0.01, 3.0, 10)
    fn = ExactVEScore(mix, levels)
    x = run(langevin.sample, fn, torch.arange(10), n_steps_each=100, eps=3e-4)
    assert fn.nfe == 1000
    assert max(moment_z(x, mix.noised(1.0, 0.01**2))) < 4.5


GAUSS = GaussianMixture(
    torch.ones(1, dtype=torch.float64),
    torch.tensor([[0.3, -0.2]], dtype=torch.float64),
    torch.tensor([[[0.06, 0.02], [0.02, 0.03]]], dtype=torch.float64),
)


def _affine(law: tuple[torch.Tensor, torch.Tensor], A: torch.Tensor, noise_var: float) -> tuple:
    """Law of A x + (I - A) m + sqrt(noise_var) z for x ~ N(mu, V), m the Gaussian's mean."""
    mu, V = law
    eye = torch.eye(2, dtype=torch.float64)
    return A @ mu + (eye - A) @ GAUSS.means[0], A @ V @ A.T + noise_var * eye


def _precision(sigma) -> torch.Tensor:
    return torch.linalg.inv(GAUSS.covs[0] + sigma**2 * torch.eye(2, dtype=torch.float64))


def _as_target(law) -> GaussianMixture:
    return GaussianMixture(GAUSS.weights, law[0][None], law[1][None])


def test_annealed_langevin_on_a_gaussian_has_the_exact_law_of_alg1():
    """For one Gaussian every update is affine: the output law follows in closed form, steps and denoising included."""
    levels = geometric_sigmas(0.15, 3.0, 5)
    eye = torch.eye(2, dtype=torch.float64)
    law = (torch.zeros(2, dtype=torch.float64), 3.0**2 * eye)
    eps, n_steps = 2e-3, 10  # the chain is far from equilibrium: its law depends on every coefficient
    for sigma in torch.flip(levels, [0]):
        alpha = float(eps * sigma**2 / levels[0] ** 2)
        for _ in range(n_steps):
            law = _affine(law, eye - 0.5 * alpha * _precision(sigma), alpha)
    law = _affine(law, eye - levels[0] ** 2 * _precision(levels[0]), 0.0)
    x = run(langevin.sample, ExactVEScore(GAUSS, levels), torch.arange(5), n_steps_each=n_steps, eps=eps, denoise=True)
    assert max(moment_z(x, _as_target(law))) < 4.5
    # Denoising shrinks the covariance a lot here: the test tells the two apart.
    assert moment_z(x, GAUSS.noised(1.0, 0.15**2))[1] > 10


@pytest.mark.parametrize("denoise", [True, False])
def test_pc_with_ald_corrector_on_a_gaussian_has_the_exact_law_of_alg2(denoise):
    levels = geometric_sigmas(0.1, 3.0, 6)
    grid = torch.tensor([0, 2, 3, 5])
    eye = torch.eye(2, dtype=torch.float64)
    law = (torch.zeros(2, dtype=torch.float64), 3.0**2 * eye)
    snr, n_steps = 0.3, 2
    visited = levels[grid]
    for k in range(len(grid) - 1, -1, -1):
        sigma = visited[k]
        e = float(2 * (snr * sigma) ** 2)
        for _ in range(n_steps):
            law = _affine(law, eye - e * _precision(sigma), 2 * e)
        var = float(sigma**2 - (visited[k - 1] ** 2 if k > 0 else 0.0))
        law = _affine(law, eye - var * _precision(sigma), 0.0 if (k == 0 and denoise) else var)
    fn = ExactVEScore(GAUSS, levels)
    x = run(pc.sample, fn, grid, n_steps_each=n_steps, snr=snr, corrector="ald", denoise=denoise)
    assert fn.nfe == len(grid) * (n_steps + 1)
    assert max(moment_z(x, _as_target(law))) < 4.5


def test_pc_predictor_only_reproduces_the_mixture(mix):
    levels = geometric_sigmas(0.01, 3.0, 300)
    x = run(pc.sample, ExactVEScore(mix, levels), torch.arange(300), n_steps_each=0)
    assert max(moment_z(x, mix)) < 4.5


def test_pc_with_ald_corrector_reproduces_the_mixture(mix):
    levels = geometric_sigmas(0.01, 3.0, 200)
    fn = ExactVEScore(mix, levels)
    x = run(pc.sample, fn, torch.arange(200), n_steps_each=1, snr=0.16, corrector="ald")
    assert fn.nfe == 400
    assert max(moment_z(x, mix)) < 4.5


def _official_langevin_step(x, g, z, snr):
    """score-SDE sampling.py L276-L280 on one batch: the norms' means over the batch, alpha = 1 (VE)."""
    grad_norm = torch.norm(g.reshape(g.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(z.reshape(z.shape[0], -1), dim=-1).mean()
    step = (snr * noise_norm / grad_norm) ** 2 * 2
    return x + step * g + torch.sqrt(step * 2) * z


def test_pc_langevin_corrector_is_score_sdes_step_on_each_block_of_norm_block_samples(mix):
    """One level, 7 samples, norm_block 3: blocks [0, 3), [3, 6), [6, 7) each take the official step, then
    the predictor to sigma = 0 (its mean returned)."""
    sigma = torch.tensor([0.4], dtype=torch.float64)
    fn = ExactVEScore(mix, sigma)
    noise = NoiseSource(torch.arange(7), SHAPE, torch.float64, "cpu")
    x_T = 0.4 * noise.latent()
    got = pc.sample(fn, x_T, torch.tensor([0]), noise=noise, snr=0.3, n_steps_each=1, norm_block=3)
    g, z = fn(x_T, sigma), noise.normal(0, extra=1)
    x = torch.cat([_official_langevin_step(x_T[b], g[b], z[b], 0.3) for b in (slice(0, 3), slice(3, 6), slice(6, 7))])
    want = x + 0.4**2 * fn(x, sigma)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_pc_langevin_block_mean_step_converges_where_the_per_sample_step_does_not():
    """With exact scores in d = 2, the per-sample step e(x) leaves the wrong law (covariance several times
    too large at every K); score-SDE's batch-mean step over a 1024-sample block reproduces the mixture."""
    mix2 = GaussianMixture.random(2, 2, seed=3, spread=1.0)
    levels = geometric_sigmas(0.01, 5.0, 100)
    fn = ExactVEScore(mix2, levels)
    block = run(pc.sample, fn, torch.arange(100), n=1024, snr=0.16, norm_block=1024)
    assert max(moment_z(block, mix2)) < 4.5
    per_sample = run(pc.sample, fn, torch.arange(100), n=1024, snr=0.16, norm_block=1)
    assert torch.cov(per_sample.T).trace() > 2 * mix2.cov().trace()


@pytest.mark.parametrize(
    ("sampler", "opts"),
    [
        (langevin.sample, {"n_steps_each": 3, "eps": 1e-3, "denoise": True}),
        (pc.sample, {"n_steps_each": 2, "snr": 0.16, "corrector": "langevin", "norm_block": 1}),
        (pc.sample, {"n_steps_each": 1, "corrector": "ald", "denoise": False}),
    ],
)
def test_samples_depend_only_on_their_own_seed(mix, sampler, opts):
    levels = geometric_sigmas(0.01, 3.0, 6)
    fn = ExactVEScore(mix, levels)
    grid = torch.tensor([0, 2, 5])
    batch = run(sampler, fn, grid, n=5, seed0=10, **opts)
    alone = run(sampler, fn, grid, n=1, seed0=13, **opts)
    torch.testing.assert_close(alone[0], batch[3], rtol=1e-13, atol=1e-13)
    assert not torch.allclose(batch[0], batch[1])


def test_bad_sampler_options_are_rejected(mix):
    levels = geometric_sigmas(0.01, 3.0, 6)
    fn = ExactVEScore(mix, levels)
    noise = NoiseSource(torch.arange(3), SHAPE, torch.float64, "cpu")
    with pytest.raises(ValueError, match="must be ascending unique indices in \\[0, 5\\]"):
        langevin.sample(fn, noise.latent(), torch.tensor([0, 6]), noise=noise)
    with pytest.raises(ValueError, match="n_steps_each=0 must be a positive integer"):
        run(langevin.sample, fn, torch.arange(6), n_steps_each=0)
    with pytest.raises(ValueError, match="'mala' is not one of"):
        run(pc.sample, fn, torch.arange(6), corrector="mala")
    with pytest.raises(ValueError, match="snr=-1"):
        run(pc.sample, fn, torch.arange(6), snr=-1.0)
    with pytest.raises(ValueError, match="norm_block=0 must be a positive integer"):
        run(pc.sample, fn, torch.arange(6), norm_block=0)
