"""iDDPM: respacing rules, the cosine schedule, learned-range variances, the hybrid loss, its VLB and sampler."""

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, posterior_coefficients
from bench.core.time_grids import respaced_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.iddpm import (
    LearnedVarianceDenoiser,
    LossSecondMomentSampler,
    VariancePrediction,
    hybrid_loss,
    hybrid_terms,
    learned_log_variance,
    learned_vlb_bits_per_dim,
    log_variance_bounds,
    vlb_loss,
    vlb_terms,
)
from bench.metrics.nll import vlb_bits_per_dim
from bench.nets.mlp import MLPDenoiser
from bench.samplers import ddim, ddpm, iddpm

torch.set_num_threads(1)


# --- respacing (bench.core.time_grids.respaced_grid, improved_diffusion respace.py space_timesteps) ----------


def respaced(T: int, spec: str) -> torch.Tensor:
    """iDDPM's respacing of T steps by ``spec``, asking for as many steps as the spec keeps."""
    counts = spec[len("ddim") :] if spec.startswith("ddim") else spec
    return respaced_grid(T, sum(int(c) for c in counts.split(",")), spec)


def test_respacing_documented_examples():
    assert respaced(1000, "10").tolist() == [111 * i for i in range(10)]  # 999 / 9 = 111
    assert respaced(1000, "ddim50").tolist() == list(range(0, 1000, 20))
    # stride 30 gives 34 steps, stride 31 gives exactly 33 (31 * 32 = 992 < 1000)
    assert respaced(1000, "ddim33").tolist() == list(range(0, 1000, 31))
    second = [100 + round(i * 99 / 14) for i in range(15)]
    # 7 * 99/14 = 49.5 exactly, but improved_diffusion sums the float stride 99/14 seven times: 49.4999...
    assert second[7] == 150
    second[7] = 149
    expected = [round(i * 99 / 9) for i in range(10)] + second + [200 + round(i * 99 / 19) for i in range(20)]
    assert respaced(300, "10,15,20").tolist() == expected
    assert respaced_grid(300, 45, [10, 15, 20]).tolist() == expected
    assert {0, 99, 100, 199, 200, 299} <= set(expected)


def test_respacing_sections_rounding_and_single_steps():
    # T=10 in 3 sections: sizes 4, 3, 3 (the remainder goes to the first); 1.5 rounds to 2
    assert respaced(10, "3,3,3").tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert respaced(6, "3").tolist() == [0, 2, 5]  # round(2.5) = 2: Python rounds half to even
    # improved_diffusion accumulates the float stride 15/14; 7 * 15/14 = 7.5 would round to 8
    assert respaced(16, "15").tolist() == [s for s in range(16) if s != 8]
    assert respaced(100, "1").tolist() == [0]
    assert respaced(100, "1,1").tolist() == [0, 50]
    assert respaced(1000, "1000").tolist() == list(range(1000))


@pytest.mark.parametrize("seed", range(5))
def test_realised_length_equals_the_request(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        T = int(torch.randint(1, 2000, (1,), generator=g))
        n_sections = int(torch.randint(1, 5, (1,), generator=g))
        size = T // n_sections
        counts = [int(torch.randint(0, size + 1, (1,), generator=g)) for _ in range(n_sections)]
        if sum(counts) == 0:
            continue
        steps = respaced(T, ",".join(map(str, counts)))
        assert steps[0] >= 0 and steps[-1] <= T - 1 and torch.all(steps[1:] > steps[:-1])
        N = int(torch.randint(1, T + 1, (1,), generator=g))
        try:
            ddim_steps = respaced(T, f"ddim{N}")
        except ValueError:
            assert all(len(range(0, T, s)) != N for s in range(1, T))
        else:
            assert ddim_steps[0] == 0


# --- the cosine schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 10, 1000, 4000])
def test_cosine_alpha_bar_is_iddpm_formula(T):
    s = 0.008

    def f(t):
        return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2

    betas = [min(1 - f(t) / f(t - 1), 0.999) for t in range(1, T + 1)]
    sch = DiscreteSchedule.named("cosine", T)
    assert torch.allclose(sch.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-12, atol=0)
    assert sch.betas[-1].item() == 0.999  # f(1) = cos^2(pi/2) = 0: the last beta is clipped
    assert torch.all(sch.betas[:-1] < 0.999)  # and only the last one
    normalised = torch.tensor([f(t) / f(0) for t in range(1, T)], dtype=torch.float64)
    assert torch.allclose(sch.alpha_bars[:-1], normalised, rtol=1e-12, atol=0)
    assert sch.alpha_bars[-1].item() == pytest.approx(f(T - 1) / f(0) * 0.001, rel=1e-12)


# --- learned-range variance ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["1000", "25", "ddim40", "3,5,8"])
def test_learned_variance_interpolates_beta_and_clipped_beta_tilde(spec):
    sch = DiscreteSchedule.named("cosine", 1000)
    grid = respaced(1000, spec)
    abar = sch.alpha_bars[grid].tolist()
    prev = [1.0] + abar[:-1]
    beta = torch.tensor([1 - a / p for a, p in zip(abar, prev, strict=True)], dtype=torch.float64)
    beta_tilde = torch.tensor(
        [(1 - p) / (1 - a) * b for a, p, b in zip(abar, prev, beta.tolist(), strict=True)], dtype=torch.float64
    )
    beta_tilde[0] = beta_tilde[1]  # iDDPM's clip: beta-tilde_0 = 0 is replaced by beta-tilde_1
    log_beta, log_beta_tilde = log_variance_bounds(sch, grid)
    ones = torch.ones(len(grid), dtype=torch.float64)
    assert torch.allclose(torch.exp(learned_log_variance(ones, log_beta, log_beta_tilde)), beta, rtol=1e-10)
    assert torch.allclose(torch.exp(learned_log_variance(-ones, log_beta, log_beta_tilde)), beta_tilde, rtol=1e-10)
    mid = torch.exp(learned_log_variance(0 * ones, log_beta, log_beta_tilde))
    assert torch.allclose(mid, torch.sqrt(beta * beta_tilde), rtol=1e-10)


def test_learned_variance_needs_a_valid_grid():
    sch = DiscreteSchedule.named("cosine", 100)
    with pytest.raises(ValueError, match=r"at least 2 steps, got \[5\]"):
        log_variance_bounds(sch, torch.tensor([5]))
    with pytest.raises(ValueError, match=r"ascending unique steps in \[0, T-1=99\]"):
        log_variance_bounds(sch, torch.tensor([0, 50, 40]))
    with pytest.raises(ValueError, match=r"ascending unique steps"):
        log_variance_bounds(sch, torch.tensor([0, 100]))


# --- oracles ------------------------------------------------------------------------------------


class ConstantVNetwork(nn.Module):
    """The exact eps of ``mixture`` with a constant variance output v."""

    def __init__(self, mixture, schedule, v, time_scale):
        super().__init__()
        self.eps = ExactEpsNetwork(mixture, schedule, (mixture.dim,))
        self.v, self.time_scale = v, time_scale

    def forward(self, x, t):
        eps = self.eps(x, t / self.time_scale)
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


class OptimalVarianceNetwork(nn.Module):
    """Gaussian data N(m, diag(c)): exact eps and the v giving the KL-optimal variance of each respaced step.

    q(x_s | x_t) is then N(mu(x_t, E[x0 | x_t]), beta-tilde + c0^2 Cov[x0 | x_t]) exactly, with the
    constant Cov[x0 | x_t] = diag(1 / (1/c + abar / (1 - abar))), so that variance minimises every
    expected KL term; at the first step (the decoder) the optimum is Cov[x0 | x_t] itself.
    """

    def __init__(self, mean, var, schedule, grid, time_scale):
        super().__init__()
        mix = GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], torch.diag(var)[None])
        self.eps = ExactEpsNetwork(mix, schedule, (len(mean),))
        self.var, self.abar, self.grid, self.time_scale = var, schedule.alpha_bars, grid, time_scale
        self.log_beta, self.log_beta_tilde = log_variance_bounds(schedule, grid)

    def optimal_variance(self, k):
        a = self.abar[self.grid[k]]
        post = 1.0 / (1.0 / self.var + a / (1 - a))
        if k == 0:
            return post
        c0, _, beta_tilde = posterior_coefficients(self.abar[self.grid[k - 1]], a)
        return beta_tilde + c0**2 * post

    def forward(self, x, t):
        n = round(t[0].item() / self.time_scale)
        k = int((self.grid == n).nonzero()[0])
        frac = (torch.log(self.optimal_variance(k)) - self.log_beta_tilde[k]) / (
            self.log_beta[k] - self.log_beta_tilde[k]
        )
        eps = self.eps(x, torch.full((x.shape[0],), float(n), dtype=torch.float64))
        return torch.cat([eps, (2 * frac - 1).expand_as(eps)], dim=1)


def moment_z_scores(x, mean, cov):
    """Largest |error| of the sample mean and covariance, each in units of its Monte-Carlo standard error."""
    se_mu = torch.sqrt(torch.diag(cov) / len(x))
    se_cov = torch.sqrt((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / len(x))
    z_mu = ((x.mean(0) - mean).abs() / se_mu).max().item()
    z_cov = ((torch.cov(x.T) - cov).abs() / se_cov).max().item()
    return z_mu, z_cov


# --- the denoiser -------------------------------------------------------------------------------


class RecordingNetwork(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.w = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.times = []

    def forward(self, x, t):
        self.times.append(t.clone())
        return torch.cat([self.w * x, torch.full_like(x, -0.25)], dim=1)


def test_denoiser_returns_eps_x0_v_rescales_time_and_counts_nfe():
    sch = DiscreteSchedule.named("cosine", 4000)
    net = RecordingNetwork(3)
    den = LearnedVarianceDenoiser(net, sch)
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    pred = den(x, 2000)
    assert isinstance(pred, VariancePrediction) and den.nfe == 1
    assert torch.equal(net.times[-1], torch.full((5,), 500.0, dtype=torch.float64))  # 2000 * 1000 / 4000
    assert torch.equal(pred.eps, 0.5 * x) and torch.equal(pred.v, torch.full_like(x, -0.25))
    abar = sch.alpha_bars[2000]
    assert torch.allclose(pred.x0, (x - torch.sqrt(1 - abar) * 0.5 * x) / torch.sqrt(abar), rtol=1e-14)
    LearnedVarianceDenoiser(net, sch, 1.0)(x, 2000)
    assert net.times[-1][0].item() == 2000.0 and den.nfe == 1


def test_denoiser_rejects_a_network_without_variance_channels():
    sch = DiscreteSchedule.named("cosine", 10)
    mix = GaussianMixture.random(1, 2)
    den = LearnedVarianceDenoiser(ExactEpsNetwork(mix, sch, (2,)), sch, 1.0)
    with pytest.raises(ValueError, match=r"2C = 4 channels \[eps, v\], got output of shape \(3, 2\)"):
        den(torch.zeros(3, 2, dtype=torch.float64), 5)


# --- the VLB ------------------------------------------------------------------------------------

GAUSS_MEAN = torch.tensor([0.1, -0.2], dtype=torch.float64)
GAUSS_VAR = torch.tensor([0.04, 0.0225], dtype=torch.float64)
MAX_LEVEL = 255


def discretised_gaussian_data(n, seed):
    """Draws of N(GAUSS_MEAN, diag(GAUSS_VAR)) rounded to MAX_LEVEL + 1 levels, and each draw's exact -log P (nats)."""
    g = torch.Generator().manual_seed(seed)
    x = GAUSS_MEAN + GAUSS_VAR.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x0 = 2 * torch.clamp(torch.round((x + 1) / 2 * MAX_LEVEL), 0, MAX_LEVEL) / MAX_LEVEL - 1
    h = 1 / MAX_LEVEL
    # the outer bins are open, as in the discretised decoder
    upper = torch.where(x0 + h > 1 - 1e-6, 1.0, torch.tensor(norm.cdf(((x0 + h - GAUSS_MEAN) / GAUSS_VAR.sqrt()).numpy())))
    lower = torch.where(x0 - h < -1 + 1e-6, 0.0, torch.tensor(norm.cdf(((x0 - h - GAUSS_MEAN) / GAUSS_VAR.sqrt()).numpy())))
    return x0, -torch.log(upper - lower).sum(1)


@pytest.fixture(scope="module", params=["20", "4,8,8"])
def gaussian_vlbs(request):
    sch = DiscreteSchedule.named("cosine", 1000)
    grid = respaced(1000, request.param)
    den = LearnedVarianceDenoiser(OptimalVarianceNetwork(GAUSS_MEAN, GAUSS_VAR, sch, grid, 1.0), sch)
    x0, nll = discretised_gaussian_data(4000, seed=1)
    seeds = torch.arange(len(x0))
    learned = learned_vlb_bits_per_dim(den, x0, grid, seeds, max_level=MAX_LEVEL, clip_x0=False)
    fixed = vlb_bits_per_dim(den, x0, grid, seeds, max_level=MAX_LEVEL, clip_x0=False)
    return learned, fixed, nll / (2 * math.log(2.0))


def mean_and_se(x):
    return x.mean().item(), (x.std() / math.sqrt(len(x))).item()


def test_kl_optimal_learned_variance_beats_both_fixed_variances(gaussian_vlbs):
    learned, fixed, _ = gaussian_vlbs
    for variance, bpd in fixed.items():
        diff, se = mean_and_se(learned - bpd)  # paired: both bounds share every draw
        assert diff + 4 * se < 0, (variance, diff, se)


def test_vlb_is_never_below_the_exact_nll(gaussian_vlbs):
    learned, fixed, nll = gaussian_vlbs
    for bpd in (learned, *fixed.values()):
        gap, se = mean_and_se(bpd - nll)
        assert gap + 4 * se >= 0, (gap, se)
    gap, se = mean_and_se(learned - nll)
    assert gap < 0.05, (gap, se)  # with the optimal variances the bound is tight (the exact NLL is 6.51)


def test_learned_vlb_needs_two_steps_and_a_learned_denoiser():
    sch = DiscreteSchedule.named("cosine", 100)
    mix = GaussianMixture.random(1, 2)
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    den = LearnedVarianceDenoiser(ConstantVNetwork(mix, sch, 0.0, 10.0), sch)
    with pytest.raises(ValueError, match="at least 2 steps"):
        learned_vlb_bits_per_dim(den, x0, torch.tensor([99]), torch.arange(3), max_level=255)
    with pytest.raises(TypeError, match="needs a denoiser returning v, got Prediction"):
        learned_vlb_bits_per_dim(
            DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, (2,)), sch), x0, torch.tensor([0, 99]), torch.arange(3),
            max_level=255,
        )


# --- the hybrid loss ----------------------------------------------------------------------------


def small_net(seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiser(channels=1, image_size=2, width=32, depth=2, emb_dim=16, out_channels=2)
    for p in net.out.parameters():
        nn.init.normal_(p, std=0.1)  # the zero-initialised head would output eps = v = 0
    return net


def level_data(n, seed, max_level=15):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randint(0, max_level + 1, (n, 1, 2, 2), generator=g).float() / max_level - 1


def test_hybrid_terms_stop_gradient_separates_eps_and_v():
    sch = DiscreteSchedule.named("cosine", 100)
    net = small_net()
    outputs = []
    net.register_forward_hook(lambda mod, args, out: outputs.append(out))
    x0 = level_data(64, 0)
    n = torch.cat([torch.zeros(8, dtype=torch.int64), torch.randint(1, 100, (56,), generator=torch.Generator().manual_seed(1))])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    simple, vlb = hybrid_terms(net, sch, x0, n, noise, max_level=15)
    assert torch.isfinite(simple).all() and torch.isfinite(vlb).all()
    out = outputs[-1]
    g_simple, = torch.autograd.grad(simple.sum(), out, retain_graph=True)
    g_vlb, = torch.autograd.grad(vlb.sum(), out)
    assert torch.all(g_simple[:, 1] == 0) and torch.all(g_simple[:, 0] != 0)  # L_simple: eps only
    assert torch.all(g_vlb[:, 0] == 0) and torch.all(g_vlb[:, 1] != 0)  # L_vlb: v only
    # and through the parameters: the v rows of the head get no L_simple gradient, the eps rows no L_vlb one
    w_simple, = torch.autograd.grad(hybrid_terms(net, sch, x0, n, noise, max_level=15)[0].sum(), net.out.weight)
    w_vlb, = torch.autograd.grad(hybrid_terms(net, sch, x0, n, noise, max_level=15)[1].sum(), net.out.weight)
    assert torch.all(w_simple[4:] == 0) and torch.all(w_vlb[:4] == 0)
    assert w_simple[:4].abs().sum() > 0 and w_vlb[4:].abs().sum() > 0


class ZeroNetwork(nn.Module):
    """eps_hat = 0, v = 0: every term has a closed form."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        return torch.cat([x, x], dim=1) * self.p


def test_hybrid_terms_equal_closed_forms():
    sch = DiscreteSchedule.named("cosine", 50)
    max_level = 15
    x0 = level_data(40, 3, max_level).double()
    n = torch.arange(40) % 50
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    simple, vlb = hybrid_terms(ZeroNetwork(), sch, x0, n, noise, max_level=max_level)
    assert torch.allclose(simple, (noise**2).flatten(1).mean(1), rtol=1e-14)
    abar = sch.alpha_bars.tolist()
    for i in range(40):
        t = int(n[i])
        a = abar[t]
        a_prev = abar[t - 1] if t > 0 else 1.0
        beta = 1 - a / a_prev
        x_t = math.sqrt(a) * x0[i].flatten() + math.sqrt(1 - a) * noise[i].flatten()
        x0_hat = x_t / math.sqrt(a)
        bt1 = (1 - abar[0]) / (1 - abar[1]) * (1 - abar[1] / abar[0])
        beta_tilde = (1 - a_prev) / (1 - a) * beta if t > 0 else bt1
        var_p = math.sqrt(beta * beta_tilde)  # v = 0: geometric mean
        terms = []
        for d in range(4):
            x, xh = x0[i].flatten()[d].item(), x0_hat[d].item()
            if t == 0:
                h, sd = 1 / max_level, math.sqrt(var_p)
                hi = 1.0 if x > 1 - 1e-6 - h else norm.cdf((x + h - xh) / sd)
                lo = 0.0 if x < -1 + 1e-6 + h else norm.cdf((x - h - xh) / sd)
                terms.append(-math.log(max(hi - lo, 1e-12)))
            else:
                c0 = math.sqrt(a_prev) * beta / (1 - a)
                terms.append(0.5 * (math.log(var_p / beta_tilde) + beta_tilde / var_p + c0**2 * (x - xh) ** 2 / var_p - 1))
        assert vlb[i].item() == pytest.approx(sum(terms) / 4 / math.log(2), rel=1e-9, abs=1e-12), t


def test_hybrid_loss_combines_the_terms_with_lambda_times_T():
    sch = DiscreteSchedule.named("cosine", 100)
    net = small_net(1)
    x0 = level_data(32, 5)
    loss = hybrid_loss(net, sch, x0, torch.Generator().manual_seed(7), max_level=15, lam=0.001)
    g = torch.Generator().manual_seed(7)
    n = torch.randint(0, 100, (32,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    simple, vlb = hybrid_terms(net, sch, x0, n, noise, max_level=15)
    assert loss.item() == pytest.approx((simple + 0.001 * 100 * vlb).mean().item(), rel=1e-12)
    assert hybrid_loss(net, sch, x0, torch.Generator().manual_seed(7), max_level=15, lam=0.0).item() == pytest.approx(
        simple.double().mean().item(), rel=1e-12
    )
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="lambda=-1"):
        hybrid_loss(net, sch, x0, g, max_level=15, lam=-1)
    with pytest.raises(ValueError, match="max_level=0"):
        hybrid_terms(net, sch, x0, n, noise, max_level=0)


def test_loss_second_moment_sampler():
    T = 4
    sampler = LossSecondMomentSampler(T, history=2, uniform_prob=0.2)
    assert torch.equal(sampler.probs(), torch.full((T,), 0.25, dtype=torch.float64))
    sampler.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([9.0, 1.0, 1.0, 2.0, 3.0, 1.0, 1.0]))
    assert torch.equal(sampler.probs(), torch.full((T,), 0.25, dtype=torch.float64))  # step 3 has one loss only
    sampler.update(torch.tensor([3, 0]), torch.tensor([2.0, 4.0]))  # step 0 now holds [3, 4]
    w = torch.tensor([math.sqrt(12.5), 1.0, 1.0, 2.0], dtype=torch.float64)
    expected = 0.8 * w / w.sum() + 0.2 / T
    assert torch.allclose(sampler.probs(), expected, rtol=1e-12)
    n, weights = sampler.sample(1000, torch.Generator().manual_seed(0))
    assert torch.allclose(weights, 1 / (T * expected[n]), rtol=1e-12)
    counts = torch.bincount(n, minlength=T).double()
    assert torch.all((counts - 1000 * expected).abs() < 5 * torch.sqrt(1000 * expected * (1 - expected)))


def test_hybrid_loss_with_importance_sampling_updates_the_sampler():
    sch = DiscreteSchedule.named("cosine", 10)
    sampler = LossSecondMomentSampler(10, history=1)
    net = small_net(2)
    for seed in range(3):
        hybrid_loss(net, sch, level_data(16, seed), torch.Generator().manual_seed(seed), max_level=15, t_sampler=sampler)
    assert sampler.counts.sum().item() == sum(min(1, c) for c in sampler.counts.tolist()) > 0


def warmed_sampler(T, seed, history=10):
    """A loss-aware sampler whose every step holds ``history`` losses, drawn at random."""
    sampler = LossSecondMomentSampler(T, history=history)
    g = torch.Generator().manual_seed(seed)
    steps = torch.arange(T).repeat(history)
    sampler.update(steps, torch.rand(len(steps), generator=g, dtype=torch.float64) * (1 + steps))
    return sampler


def test_loss_aware_sampler_has_the_official_history_and_mixing_and_warms_up_on_the_tenth_loss():
    T = 3
    sampler = LossSecondMomentSampler(T)
    assert sampler.losses.shape == (T, 10) and sampler.uniform_prob == 0.001
    history = torch.arange(1.0, 31.0, dtype=torch.float64).view(10, T)  # row j: the j-th loss of steps 0, 1, 2
    for j in range(10):
        assert torch.equal(sampler.probs(), torch.full((T,), 1 / T, dtype=torch.float64))
        sampler.update(torch.arange(T), history[j])
    w = torch.sqrt((history**2).mean(0))
    assert torch.allclose(sampler.probs(), 0.999 * w / w.sum() + 0.001 / T, rtol=1e-14)
    sampler.update(torch.tensor([1]), torch.tensor([100.0]))  # an eleventh loss pushes out step 1's first
    w[1] = math.sqrt(((history[1:, 1] ** 2).sum() + 100.0**2) / 10)
    assert torch.allclose(sampler.probs(), 0.999 * w / w.sum() + 0.001 / T, rtol=1e-14)


def test_loss_aware_sampler_state_round_trips_and_is_checked():
    sampler = warmed_sampler(5, 0)
    restored = LossSecondMomentSampler(5)
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.probs(), sampler.probs())
    a, b = (s.sample(64, torch.Generator().manual_seed(1)) for s in (sampler, restored))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    sampler.update(torch.tensor([0]), torch.tensor([7.0]))
    assert not torch.equal(restored.losses, sampler.losses)  # a copy, not a view of the live history
    with pytest.raises(ValueError, match=r"losses of shape \(5, 10\).*needs \(6, 10\) and \(6,\)"):
        LossSecondMomentSampler(6).load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="uniform_prob=0.001, this sampler 0.01"):
        LossSecondMomentSampler(5, uniform_prob=0.01).load_state_dict(sampler.state_dict())


@pytest.mark.parametrize("objective", ["hybrid", "vlb"])
def test_importance_weighted_loss_weights_by_one_over_T_p_and_records_the_unweighted_losses(objective):
    T, B = 10, 48
    sch = DiscreteSchedule.named("cosine", T)
    net = small_net(3)
    x0 = level_data(B, 6)
    sampler = warmed_sampler(T, 2)
    expected_sampler = LossSecondMomentSampler(T)
    expected_sampler.load_state_dict(sampler.state_dict())
    p = sampler.probs()
    assert p.max() > 2 * p.min()  # far from uniform, so the weights matter
    if objective == "hybrid":
        loss = hybrid_loss(net, sch, x0, torch.Generator().manual_seed(9), max_level=15, t_sampler=sampler)
    else:
        loss = vlb_loss(net, sch, x0, torch.Generator().manual_seed(9), max_level=15, t_sampler=sampler)
    g = torch.Generator().manual_seed(9)
    n = torch.multinomial(p, B, replacement=True, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    simple, term = hybrid_terms(net, sch, x0, n, noise, max_level=15)
    # improved_diffusion: RESCALED_MSE's loss is mse + vb T / 1000, RESCALED_KL's is vb T (bits/dim)
    per_sample = simple + 0.001 * T * term if objective == "hybrid" else T * term
    assert loss.item() == pytest.approx((per_sample.double() / (T * p[n])).mean().item(), rel=1e-12)
    expected_sampler.update(n, per_sample)
    assert torch.allclose(sampler.losses, expected_sampler.losses, rtol=1e-12)


def test_vlb_loss_is_T_times_the_hybrids_vlb_term_and_trains_both_eps_and_v():
    T, B = 20, 40
    sch = DiscreteSchedule.named("cosine", T)
    net = small_net(4)
    outputs = []
    net.register_forward_hook(lambda mod, args, out: outputs.append(out))
    x0 = level_data(B, 8)
    loss = vlb_loss(net, sch, x0, torch.Generator().manual_seed(5), max_level=15)
    g = torch.Generator().manual_seed(5)
    n = torch.randint(0, T, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    _, term = hybrid_terms(net, sch, x0, n, noise, max_level=15)
    assert loss.item() == pytest.approx(T * term.double().mean().item(), rel=1e-12)
    # Over every step, T times the mean of the uniform draws' terms is L_0 + ... + L_{T-1}: the bound less L_T.
    all_n = torch.arange(T).repeat_interleave(B)
    outputs.clear()
    all_terms = vlb_terms(net, sch, x0.repeat(T, 1, 1, 1), all_n, noise.repeat(T, 1, 1, 1), max_level=15)
    per_step = [hybrid_terms(net, sch, x0, torch.full((B,), t), noise, max_level=15)[1] for t in range(T)]
    assert torch.allclose(T * all_terms.view(T, B).mean(0), torch.stack(per_step).sum(0), rtol=1e-12)
    gradient, = torch.autograd.grad(all_terms.sum(), outputs[0])
    assert torch.all(gradient[:, 0] != 0) and torch.all(gradient[:, 1] != 0)  # no stop-gradient on eps


# --- sampling -----------------------------------------------------------------------------------

N = 4000


def run(sampler, den, grid, n=N, **opts):
    noise = NoiseSource(torch.arange(n), (2,), torch.float64, "cpu")
    return sampler(den, noise.latent(), grid, noise=noise, **opts)


@pytest.mark.parametrize(("v", "variance"), [(1.0, "beta"), (-1.0, "beta_tilde")])
@pytest.mark.parametrize("clip_x0", [True, False])
def test_constant_v_equals_ddpm_fixed_variances_on_a_respaced_grid(v, variance, clip_x0):
    sch = DiscreteSchedule.named("cosine", 500)
    mix = GaussianMixture.random(3, 2, seed=1)
    grid = respaced(500, "3,5,8")
    learned = LearnedVarianceDenoiser(ConstantVNetwork(mix, sch, v, 2.0), sch)
    fixed = DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, (2,)), sch)
    x_learned = run(iddpm.sample, learned, grid, 256, clip_x0=clip_x0)
    x_fixed = run(ddpm.sample, fixed, grid, 256, variance=variance, clip_x0=clip_x0)
    assert torch.allclose(x_learned, x_fixed, rtol=1e-9, atol=1e-12)
    assert learned.nfe == len(grid) == 16
    # the fixed-variance DDPM sampler accepts the learned-variance denoiser and ignores v
    assert torch.equal(run(ddpm.sample, learned, grid, 256, variance=variance, clip_x0=clip_x0), x_fixed)


def test_ddim_runs_on_the_eps_channels_of_a_learned_variance_denoiser():
    sch = DiscreteSchedule.named("cosine", 1000)
    mix = GaussianMixture.random(3, 2, seed=1)
    grid = respaced(1000, "ddim20")
    learned = LearnedVarianceDenoiser(ConstantVNetwork(mix, sch, 0.3, 1.0), sch)
    fixed = DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, (2,)), sch)
    for eta in (0.0, 1.0):
        assert torch.allclose(
            run(ddim.sample, learned, grid, 256, eta=eta, clip_x0=True),
            run(ddim.sample, fixed, grid, 256, eta=eta, clip_x0=True),
            rtol=1e-12, atol=1e-14,
        )
    assert learned.nfe == 2 * len(grid)


def test_optimal_learned_variance_samples_a_gaussian_exactly_in_few_steps():
    """For Gaussian data the KL-optimal Gaussian step is the true reverse step, so 10 respaced steps are exact."""
    sch = DiscreteSchedule.named("cosine", 1000)
    grid = respaced(1000, "10")
    net = OptimalVarianceNetwork(GAUSS_MEAN, GAUSS_VAR, sch, grid, 1.0)
    x = run(iddpm.sample, LearnedVarianceDenoiser(net, sch), grid, clip_x0=False)
    # the output is E[x0 | x_{tau_1}], whose covariance lacks Cov[x0 | x_{tau_1}]
    cov = torch.diag(GAUSS_VAR - net.optimal_variance(0))
    assert max(moment_z_scores(x, GAUSS_MEAN, cov)) < 4.5
    # the fixed variances are visibly off with so few steps
    eps_only = DiscreteEpsDenoiser(net.eps, sch)
    for variance in ("beta", "beta_tilde"):
        assert max(moment_z_scores(run(ddpm.sample, eps_only, grid, variance=variance, clip_x0=False), GAUSS_MEAN, cov)) > 10


def test_learned_variance_sampling_reproduces_the_mixture():
    sch = DiscreteSchedule.named("cosine", 1000)
    mix = GaussianMixture.random(3, 2, seed=1)
    grid = respaced(1000, "200")
    den = LearnedVarianceDenoiser(ConstantVNetwork(mix, sch, 0.0, 1.0), sch)
    x = run(iddpm.sample, den, grid, clip_x0=False)
    assert max(moment_z_scores(x, mix.mean(), mix.cov())) < 4.5


def test_iddpm_sampler_needs_a_learned_variance_denoiser():
    sch = DiscreteSchedule.named("cosine", 100)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(GaussianMixture.random(1, 2), sch, (2,)), sch)
    with pytest.raises(TypeError, match="needs a learned-variance denoiser"):
        run(iddpm.sample, den, respaced(100, "5"))
