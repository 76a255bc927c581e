"""DDGM Gamma and mixture-noise diffusion: forward processes, noise draws, losses and samplers.

Monte-Carlo checks compare sample moments about the exact mean with closed forms, with a tolerance
of Z standard errors estimated from the same samples.
"""

import math

import ddgm_samplers as samplers
import pytest
import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.noise import NoiseSource
from bench.core.schedules import DiscreteSchedule, posterior_coefficients
from bench.core.time_grids import time_grid
from bench.families.ddgm import ddgm_loss, mixture_loss
from bench.methods.ddgm import (
    DEFAULT_PROPOSALS,
    GammaProcess,
    GeneratorDraws,
    LatentDraws,
    StepDraws,
    _unit_gamma,
    centred_gamma,
    initial_latent,
    mixture_components,
    mixture_initial_latent,
    mixture_noise,
    mixture_phi2_schedule,
    mixture_q_sample,
)

torch.set_num_threads(1)

Z = 5.0
F64 = torch.float64
# A short chain with large betas: abar falls from 0.99 to ~1e-4 in 50 steps.
SHORT = DiscreteSchedule(torch.linspace(0.01, 0.3, 50, dtype=F64))


def gamma_sample(k: float, theta: float, draws, *, proposals: int = DEFAULT_PROPOSALS) -> torch.Tensor:
    """g ~ Gamma(k, theta) itself (the samplers use only g - k theta): mean k theta, variance k theta^2."""
    return theta * _unit_gamma(torch.as_tensor(k, dtype=F64), draws, proposals)[0]


def marginal_variance(process: GammaProcess) -> torch.Tensor:
    """Var(x_n | x_0) = kbar_n theta_n^2 (= 1 - abar_n exactly in the code convention)."""
    return process.k_bar * process.theta**2


def forward_chain(process: GammaProcess, x0: torch.Tensor, n: int, draws_of_step) -> list[torch.Tensor]:
    """States after steps 0..n of x_m = sqrt(alpha_m) x_{m-1} + g_m - k_m theta_m, g_m ~ Gamma(k_m, theta_m) (Sec. 3.2)."""
    xs = [x0.to(torch.float64)]
    for m in range(n + 1):
        g = centred_gamma(process.k[m], process.theta[m], draws_of_step(m))
        xs.append(torch.sqrt(process.schedule.alphas[m]) * xs[-1] + g)
    return xs[1:]


def mixture_forward_chain(
    schedule: DiscreteSchedule, x0: torch.Tensor, n: int, draws_of_step, *, phi2: float, p: float = 0.5
) -> list[torch.Tensor]:
    """States after steps 0..n of x_m = sqrt(alpha_m) x_{m-1} + sqrt(beta_m) eps_m (mixture eps)."""
    xs = [x0.to(torch.float64)]
    for m in range(n + 1):
        eps = mixture_noise(draws_of_step(m), phi2=phi2, p=p)
        xs.append(torch.sqrt(schedule.alphas[m]) * xs[-1] + torch.sqrt(schedule.betas[m]) * eps)
    return xs[1:]


def central_moment(x: torch.Tensor, mean: float | torch.Tensor, order: int) -> tuple[float, float]:
    """Estimate of E[(x - mean)^order] about the exact mean, and its standard error."""
    dev = ((x - mean) ** order).flatten()
    return dev.mean().item(), (dev.std() / math.sqrt(dev.numel())).item()


def assert_moment(x, mean, order, expected, what):
    est, se = central_moment(x, mean, order)
    assert abs(est - expected) < Z * se, (
        f"{what}: moment {order} = {est:.6g}, expected {expected:.6g} (SE {se:.3g})"
    )


def assert_same_moment(x, y, mean, order, what):
    ex, sx = central_moment(x, mean, order)
    ey, sy = central_moment(y, mean, order)
    se = math.hypot(sx, sy)
    assert abs(ex - ey) < Z * se, f"{what}: moment {order} {ex:.6g} vs {ey:.6g} (SE {se:.3g})"


def gamma_cumulants(process: GammaProcess, n: int) -> tuple[float, float]:
    """Variance kbar theta^2 and third cumulant 2 kbar theta^3 of the centred Gamma noise at step n."""
    kbar, theta = process.k_bar[n].item(), process.theta[n].item()
    return kbar * theta**2, 2 * kbar * theta**3


# ---------------------------------------------------------------------------------------------
# Gamma forward process


def test_code_convention_gives_per_step_variance_beta_and_marginal_variance_one_minus_alpha_bar():
    process = GammaProcess(DiscreteSchedule.named("linear", 1000), theta_0=0.001)
    torch.testing.assert_close(
        process.k * process.theta**2, process.schedule.betas, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        marginal_variance(process), 1 - process.alpha_bars, rtol=1e-10, atol=0
    )


def test_paper_convention_marginal_variance_is_not_one_minus_alpha_bar():
    process = GammaProcess(
        DiscreteSchedule.named("linear", 1000), theta_0=0.001, k_convention="paper"
    )
    abar = process.alpha_bars
    expected = abar * torch.cumsum(process.schedule.betas / process.schedule.alphas, dim=0)
    torch.testing.assert_close(marginal_variance(process), expected, rtol=1e-10, atol=0)
    # At the end of the chain the "noise" has variance ~4e-4 where DDPM's x_T has 1.
    assert marginal_variance(process)[-1] < 1e-3


@pytest.mark.parametrize("k_convention", ["code", "paper"])
def test_closed_form_matches_forward_chain_but_only_code_k_gives_variance_one_minus_alpha_bar(
    k_convention,
):
    """Lemma 1's Gamma sum is the exact law of the chain for any k_n (the scale theta_n does it);
    with the paper's k_n the chain's Var(x_n | x_0) is far from 1 - abar_n, so Lemma 2's target
    (gbar - kbar theta) / sqrt(1 - abar) is not unit-variance and DDPM's eps -> x0 map breaks."""
    process = GammaProcess(SHORT, theta_0=0.5, k_convention=k_convention)
    N, x0 = 60_000, 0.7
    gen = torch.Generator().manual_seed(1)
    start = torch.full((N,), x0, dtype=F64)
    chain = forward_chain(process, start, 49, lambda m: GeneratorDraws(gen, (N,)))
    for n in (4, 49):
        closed = process.q_sample(x0, n, process.centred_noise(n, GeneratorDraws(gen, (N,))))
        mean = math.sqrt(process.alpha_bars[n].item()) * x0
        var, k3 = gamma_cumulants(process, n)
        for name, x in (("chain", chain[n]), ("closed form", closed)):
            assert_moment(x, mean, 1, 0.0, f"{k_convention} {name} n={n}")
            assert_moment(x, mean, 2, var, f"{k_convention} {name} n={n}")
            assert_moment(x, mean, 3, k3, f"{k_convention} {name} n={n}")
        for order in (1, 2, 3):
            assert_same_moment(
                chain[n], closed, mean, order, f"{k_convention} chain vs closed n={n}"
            )
    # early on the two conventions differ by less than the MC error; at the end by ~1000 SE
    est, se = central_moment(chain[49], math.sqrt(process.alpha_bars[49].item()) * x0, 2)
    one_minus_abar = 1 - process.alpha_bars[49].item()
    assert (abs(est - one_minus_abar) < Z * se) == (k_convention == "code"), (est, se)
    target = process.eps_target(49, process.centred_noise(49, GeneratorDraws(gen, (N,))))
    assert (abs(target.var().item() - 1) < 0.05) == (k_convention == "code")


# ---------------------------------------------------------------------------------------------
# Gamma draws


@pytest.mark.parametrize("k", [0.25, 1.0, 3.7, 250.0])
def test_gamma_from_noise_streams_has_gamma_mean_variance_and_skewness(k):
    theta = 0.8
    noise = NoiseSource(torch.arange(20_000), (10,), F64, "cpu")
    g = gamma_sample(k, theta, StepDraws(noise, 2))
    mean = k * theta
    assert_moment(g, mean, 1, 0.0, f"k={k}")
    assert_moment(g, mean, 2, k * theta**2, f"k={k}")
    # third central moment 2 k theta^3 = skewness 2 / sqrt(k) times the variance^(3/2)
    assert_moment(g, mean, 3, 2 * k * theta**3, f"k={k}")
    assert torch.all(g > 0)


@pytest.mark.parametrize("k", [0.3, 1.0])
def test_gamma_draw_of_a_seed_does_not_depend_on_its_batch(k):
    """Seed 1234 alone, among 3000 others (some needing later proposals), and in a small batch."""

    def draw(seeds):
        noise = NoiseSource(torch.tensor(seeds), (16,), F64, "cpu")
        return centred_gamma(k, 0.5, StepDraws(noise, 7))

    alone = draw([1234])[0]
    big = draw(list(range(3000)))
    small = draw([77, 1234, 5])[1]
    assert torch.equal(alone, big[1234]) and torch.equal(alone, small)
    other_step = centred_gamma(
        k, 0.5, StepDraws(NoiseSource(torch.tensor([1234]), (16,), F64, "cpu"), 8)
    )
    assert not torch.equal(alone, other_step[0])


def test_proposal_fallback_is_the_z_zero_proposal_and_rare_with_the_default_count():
    noise = NoiseSource(torch.arange(20_000), (10,), F64, "cpu")
    one = gamma_sample(1.0, 1.0, StepDraws(noise, 0), proposals=1)
    default = gamma_sample(1.0, 1.0, StepDraws(noise, 0))
    fallback = 2.0 / 3.0  # d = k - 1/3 at z = 0
    rejected = (
        torch.isclose(one, torch.tensor(fallback, dtype=F64), rtol=0, atol=1e-12)
        .double()
        .mean()
        .item()
    )
    assert 0.03 < rejected < 0.07  # Marsaglia-Tsang rejects ~4.9% of proposals at k = 1
    assert not torch.isclose(default, torch.tensor(fallback, dtype=F64), rtol=0, atol=1e-12).any()


@pytest.mark.parametrize("n", [0, 10, 999])
def test_normalised_gamma_noise_has_zero_mean_unit_variance_and_gamma_skewness(n):
    process = GammaProcess(DiscreteSchedule.named("linear", 1000), theta_0=0.001)
    noise = NoiseSource(torch.arange(10_000), (10,), F64, "cpu")
    z = process.normalised_noise(n, StepDraws(noise, 4))
    assert_moment(z, 0.0, 1, 0.0, f"n={n}")
    assert_moment(z, 0.0, 2, 1.0, f"n={n}")
    assert_moment(z, 0.0, 3, 2 / math.sqrt(process.k_bar[n].item()), f"n={n}")


def test_initial_latent_is_the_centred_gamma_of_the_top_step_and_uses_its_own_streams():
    schedule = DiscreteSchedule.named("linear", 100)
    process = GammaProcess(schedule, theta_0=0.05)
    noise = NoiseSource(torch.arange(20_000), (5,), F64, "cpu")
    for step in (None, 40):
        n = 99 if step is None else step
        x = initial_latent(noise, schedule, 0.05, step=step)
        var, k3 = gamma_cumulants(process, n)
        assert_moment(x, 0.0, 1, 0.0, f"x_T at {n}")
        assert_moment(x, 0.0, 2, var, f"x_T at {n}")
        assert_moment(x, 0.0, 3, k3, f"x_T at {n}")
    one = NoiseSource(torch.tensor([17]), (5,), F64, "cpu")
    torch.testing.assert_close(
        initial_latent(one, schedule, 0.05)[0],
        initial_latent(noise, schedule, 0.05)[17],
        rtol=0,
        atol=0,
    )
    latent_normal = LatentDraws(noise).normal(0)
    assert not torch.equal(latent_normal, noise.latent())
    assert not torch.equal(latent_normal, StepDraws(noise, 0).normal(0))


# ---------------------------------------------------------------------------------------------
# Losses


class PointMassEpsNetwork(nn.Module):
    """Exact eps for data x0 = c: eps = (x_n - sqrt(abar_n) c) / sqrt(1 - abar_n), whatever the noise law."""

    def __init__(self, c: torch.Tensor, schedule: DiscreteSchedule):
        super().__init__()
        self.c = c.to(F64)
        self.alpha_bars = schedule.alpha_bars
        self._dummy = nn.Parameter(torch.zeros((), dtype=F64), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alpha_bars[t.round().long()].view(-1, *([1] * (x.dim() - 1)))
        return (x.to(F64) - abar.sqrt() * self.c) / (1 - abar).sqrt()


C = torch.tensor([0.5, -0.3, 0.8, 0.0], dtype=F64).view(1, 2, 2)


@pytest.mark.parametrize(
    "loss", [lambda *a: ddgm_loss(*a, theta_0=0.05), lambda *a: mixture_loss(*a, phi2=0.3, p=0.4)]
)
def test_losses_vanish_for_the_exact_eps_of_point_mass_data(loss):
    schedule = DiscreteSchedule.named("linear", 100)
    x0 = C.expand(512, 1, 2, 2).clone()
    exact = PointMassEpsNetwork(C, schedule)
    assert loss(exact, schedule, x0, torch.Generator().manual_seed(0)).item() < 1e-9
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    first = loss(zero, schedule, x0, torch.Generator().manual_seed(0)).item()
    assert 0.5 < first < 1.0  # E|eps| of a zero-mean unit-variance variable
    assert loss(zero, schedule, x0, torch.Generator().manual_seed(0)).item() == first


# ---------------------------------------------------------------------------------------------
# Samplers


class Recording:
    """A denoiser that records the states it is called on."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.alpha_bars = denoiser.alpha_bars
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __call__(self, x, n):
        self.calls.append((n, x.clone()))
        return self.denoiser(x, n)


def predicted_moments(kind: str, grid, abar, eta_or_variance, top_second_moment):
    """Exact mean and second moment of d_n = x_n - sqrt(abar_n) c at each visited step, given eps = exact.

    Each move is d_s = r d_t + sigma z: ancestral r = ct (posterior coefficient), DDIM
    r = sqrt(1 - a_s - sigma^2) / sqrt(1 - a_t); x_T has mean 0, i.e. d_T = -sqrt(abar_T) c.
    """
    out = {}
    mean_scale, second = 1.0, top_second_moment  # d mean = -mean_scale sqrt(abar_T) c
    out[int(grid[-1])] = (mean_scale, second)
    for k in range(len(grid) - 1, 0, -1):
        a_t, a_s = abar[k], abar[k - 1]
        if kind == "ancestral":
            _, r, beta_tilde = posterior_coefficients(a_s, a_t)
            var = beta_tilde if eta_or_variance == "beta_tilde" else 1 - a_t / a_s
        else:
            var = (eta_or_variance * torch.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))) ** 2
            r = torch.sqrt(1 - a_s - var) / torch.sqrt(1 - a_t)
        mean_scale, second = mean_scale * r.item(), r.item() ** 2 * second + var.item()
        out[int(grid[k - 1])] = (mean_scale, second)
    return out


SAMPLER_CASES = [
    ("gamma", "ancestral", samplers.sample, {"variance": "beta"}),
    ("gamma", "ancestral", samplers.sample, {"variance": "beta_tilde"}),
    ("gamma", "ddim", samplers.sample_ddim, {"eta": 0.0}),
    ("gamma", "ddim", samplers.sample_ddim, {"eta": 1.0}),
    ("mixture", "ancestral", samplers.sample_mixture, {"variance": "beta"}),
    ("mixture", "ddim", samplers.sample_mixture_ddim, {"eta": 0.5}),
]


@pytest.mark.parametrize("noise_kind,kind,fn,options", SAMPLER_CASES)
def test_samplers_with_exact_eps_follow_the_closed_form_moments_and_return_the_data(
    noise_kind, kind, fn, options
):
    """Point-mass data x0 = c: eps_hat = (x - sqrt(abar) c) / sqrt(1 - abar) is exact for any noise
    law, so every state's mean and variance follow a closed-form recursion, and x0_hat = c."""
    schedule = DiscreteSchedule.named("linear", 100)
    grid = time_grid("even", 100, 10)
    N = 5000
    noise = NoiseSource(torch.arange(N), (1, 2, 2), F64, "cpu")
    if noise_kind == "gamma":
        process = GammaProcess(schedule, theta_0=0.05)  # kbar_0 ~ 0.4: strongly skewed noise
        x_T = initial_latent(noise, schedule, 0.05, step=int(grid[-1]))
        top = marginal_variance(process)[grid[-1]].item()
        extra = {"theta_0": 0.05}
    else:
        x_T = mixture_initial_latent(noise, phi2=0.1, p=0.3)
        top = 1.0
        extra = {"phi2": 0.1, "p": 0.3}
    den = Recording(DiscreteEpsDenoiser(PointMassEpsNetwork(C, schedule), schedule))
    out = fn(den, x_T, grid, noise=noise, **extra, **options)
    torch.testing.assert_close(out, C.expand_as(out), rtol=0, atol=1e-9)
    abar = schedule.alpha_bars[grid]
    setting = options.get("variance", options.get("eta"))
    predicted = predicted_moments(kind, grid, abar, setting, top + (abar[-1] * C**2).mean().item())
    assert [n for n, _ in den.calls] == grid.flip(0).tolist()
    for n, x in den.calls:
        d = x - schedule.alpha_bars[n].sqrt() * C
        mean_scale, second = predicted[n]
        # the mean of d is -mean_scale sqrt(abar_T) c per coordinate; compare d + that to zero
        shift = mean_scale * abar[-1].sqrt() * C
        assert_moment(d + shift, 0.0, 1, 0.0, f"{fn.__name__} {options} n={n}")
        assert_moment(d, 0.0, 2, second, f"{fn.__name__} {options} n={n}")
    assert den.denoiser.nfe == len(grid)


class ElementwiseEpsNetwork(nn.Module):
    """A fixed non-linear eps of each element alone, so that batching cannot change rounding."""

    def __init__(self):
        super().__init__()
        self._dummy = nn.Parameter(torch.zeros((), dtype=F64), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 0.7 + 0.001 * t.view(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize(
    "fn,options",
    [
        (samplers.sample, {"theta_0": 0.05}),
        (samplers.sample_ddim, {"theta_0": 0.05, "eta": 1.0}),
        (samplers.sample_mixture, {"phi2": 0.2}),
        (samplers.sample_mixture_ddim, {"phi2": 0.2, "eta": 0.5}),
    ],
)
def test_a_sample_depends_only_on_its_own_seed(fn, options):
    schedule = DiscreteSchedule.named("linear", 100)
    grid = time_grid("even", 100, 8)

    def run(seeds):
        noise = NoiseSource(torch.tensor(seeds), (4,), F64, "cpu")
        den = DiscreteEpsDenoiser(ElementwiseEpsNetwork(), schedule)
        if "theta_0" in options:
            x_T = initial_latent(noise, schedule, options["theta_0"])
        else:
            x_T = mixture_initial_latent(noise, phi2=options["phi2"])
        return fn(den, x_T, grid, noise=noise, **options)

    torch.testing.assert_close(run([3, 4, 5])[2], run([5])[0], rtol=0, atol=0)
    assert not torch.equal(run([3, 4, 5])[1], run([5])[0])


# ---------------------------------------------------------------------------------------------
# Mixture noise


@pytest.mark.parametrize("phi2,p", [(0.01, 0.5), (0.3, 0.2), (0.9, 0.7), (1.0, 0.5)])
def test_mixture_components_give_zero_mean_unit_variance_and_the_stated_separation(phi2, p):
    mu_1, mu_2 = mixture_components(phi2, p)
    assert p * mu_1 + (1 - p) * mu_2 == pytest.approx(0.0, abs=1e-15)
    assert phi2 + p * mu_1**2 + (1 - p) * mu_2**2 == pytest.approx(1.0, rel=1e-14)
    assert mu_1 - mu_2 == pytest.approx(math.sqrt((1 - phi2) / (p * (1 - p))), rel=1e-14)
    # the public implementations' form of mu_1
    assert mu_1 == pytest.approx(
        math.sqrt((1 - phi2) / (p * (1 - p) + p**3 / (1 - p) + 2 * p**2)), rel=1e-14
    )


class FixedComponent:
    """Draws that always pick one component (uniform fixed), with real normal offsets."""

    def __init__(self, u: float, n: int):
        self.u, self.gen, self.n = u, torch.Generator().manual_seed(0), n

    def uniform(self, j):
        return torch.full((self.n,), self.u, dtype=F64)

    def normal(self, j):
        return torch.randn(self.n, generator=self.gen, dtype=F64)


def test_phi2_is_the_variance_of_each_mixture_component():
    phi2, p = 0.15, 0.3
    mu_1, mu_2 = mixture_components(phi2, p)
    for u, mu in ((0.0, mu_1), (0.999, mu_2)):
        e = mixture_noise(FixedComponent(u, 100_000), phi2=phi2, p=p)
        assert_moment(e, mu, 1, 0.0, f"component at {mu}")
        assert_moment(e, mu, 2, phi2, f"component at {mu}")


@pytest.mark.parametrize("phi2,p", [(0.2, 0.3), (0.05, 0.5), (1.0, 0.5)])
def test_mixture_noise_from_streams_has_the_mixture_moments(phi2, p):
    mu_1, mu_2 = mixture_components(phi2, p)
    e = mixture_noise(
        StepDraws(NoiseSource(torch.arange(20_000), (10,), F64, "cpu"), 3), phi2=phi2, p=p
    )
    third = p * mu_1**3 + (1 - p) * mu_2**3
    fourth = sum(w * (m**4 + 6 * m**2 * phi2 + 3 * phi2**2) for w, m in ((p, mu_1), (1 - p, mu_2)))
    assert_moment(e, 0.0, 1, 0.0, f"phi2={phi2}")
    assert_moment(e, 0.0, 2, 1.0, f"phi2={phi2}")
    assert_moment(e, 0.0, 3, third, f"phi2={phi2}")
    assert_moment(e, 0.0, 4, fourth, f"phi2={phi2}")


def test_t_varying_component_variance_has_phi_linear_in_the_step():
    # phi = 0.2, 0.35, 0.5, 0.65, 0.8: linspace of the standard deviations, as the DDGM code's sigma
    expected = torch.tensor([0.2, 0.35, 0.5, 0.65, 0.8], dtype=F64) ** 2
    assert torch.allclose(mixture_phi2_schedule(5, 0.04, 0.64), expected, rtol=1e-14)
    assert torch.equal(mixture_phi2_schedule(5, 0.3), torch.full((5,), 0.3, dtype=F64))
    assert mixture_phi2_schedule(1, 0.3, 0.9).tolist() == pytest.approx([0.3], rel=1e-15)
    with pytest.raises(ValueError, match=r"phi2_end=1.5 must lie in \(0, 1\]"):
        mixture_phi2_schedule(5, 0.3, 1.5)
    with pytest.raises(ValueError, match=r"phi2_end=0 must lie in \(0, 1\]"):
        mixture_phi2_schedule(5, 0.3, 0)
    with pytest.raises(ValueError, match=r"variances phi2 must lie in \(0, 1\], got \[0.5, 0.0\]"):
        mixture_components(torch.tensor([0.5, 0.0]))


def test_t_varying_mixture_noise_has_zero_mean_unit_variance_and_each_steps_component_variance():
    """Each step n of 0.01 -> 0.81: mean 0, variance 1, E eps^4 = mu^4 + 6 mu^2 phi_n^2 + 3 phi_n^4 (p = 1/2)."""
    T, per_step = 5, 40_000
    phi2 = mixture_phi2_schedule(T, 0.01, 0.81)
    n = torch.arange(T).repeat_interleave(per_step)
    e = mixture_noise(StepDraws(NoiseSource(torch.arange(T * per_step), (), F64, "cpu"), 0), phi2=phi2[n])
    component = mixture_noise(FixedComponent(0.0, T * per_step), phi2=phi2[n])  # always the first component
    mu_1 = torch.sqrt(1 - phi2)  # p = 1/2: mu_1 = -mu_2 = sqrt(1 - phi^2)
    for step in range(T):
        at, v, m = n == step, phi2[step].item(), mu_1[step].item()
        what = f"step {step}, phi2={v:.4f}"
        assert_moment(e[at], 0.0, 1, 0.0, what)
        assert_moment(e[at], 0.0, 2, 1.0, what)
        assert_moment(e[at], 0.0, 4, m**4 + 6 * m**2 * v + 3 * v**2, what)
        assert_moment(component[at], m, 1, 0.0, what)
        assert_moment(component[at], m, 2, v, what)


def test_t_varying_mixture_loss_draws_each_samples_noise_at_its_step():
    T, B = 50, 64
    net = nn.Linear(4, 4).double()
    x0 = torch.rand(B, 4, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = mixture_loss(lambda x, t: net(x), SHORT, x0, torch.Generator().manual_seed(3), phi2=0.04, phi2_end=0.64)
    g = torch.Generator().manual_seed(3)
    n = torch.randint(0, T, (B,), generator=g)
    u = torch.rand(x0.shape, generator=g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    phi = (0.2 + 0.6 * n.double() / (T - 1)).view(-1, 1)
    eps = torch.where(u < 0.5, 1.0, -1.0) * torch.sqrt(1 - phi**2) + phi * z
    abar = SHORT.alpha_bars[n].view(-1, 1)
    expected = (net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps) - eps).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    constant = mixture_loss(lambda x, t: net(x), SHORT, x0, torch.Generator().manual_seed(3), phi2=0.04)
    assert constant.item() != pytest.approx(loss.item(), rel=1e-3)


def test_mixture_chain_shares_mean_and_variance_with_the_marginal_but_not_the_fourth_cumulant():
    phi2, p, N, n = 0.05, 0.5, 100_000, 49
    mu_1, _ = mixture_components(phi2, p)
    kappa4 = (mu_1**4 + 6 * mu_1**2 * phi2 + 3 * phi2**2) - 3.0  # of the unit-variance noise
    gen = torch.Generator().manual_seed(5)
    chain = mixture_forward_chain(
        SHORT, torch.zeros(N, dtype=F64), n, lambda m: GeneratorDraws(gen, (N,)), phi2=phi2, p=p
    )[n]
    marginal = mixture_q_sample(
        SHORT,
        torch.zeros(N, dtype=F64),
        n,
        mixture_noise(GeneratorDraws(gen, (N,)), phi2=phi2, p=p),
    )
    abar = SHORT.alpha_bars
    var = 1 - abar[n].item()
    weights = (abar[n] / abar[: n + 1] * SHORT.betas[: n + 1]) ** 2  # cumulants of a sum add
    for name, x, k4 in (
        ("chain", chain, kappa4 * weights.sum().item()),
        ("marginal", marginal, kappa4 * var**2),
    ):
        assert_moment(x, 0.0, 1, 0.0, name)
        assert_moment(x, 0.0, 2, var, name)
        assert_moment(x, 0.0, 4, k4 + 3 * var**2, name)
    e_chain, s_chain = central_moment(chain, 0.0, 4)
    e_marg, s_marg = central_moment(marginal, 0.0, 4)
    assert abs(e_chain - e_marg) > 10 * math.hypot(s_chain, s_marg)


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_arguments_are_rejected_with_the_allowed_values():
    schedule = DiscreteSchedule.named("linear", 100)
    noise = NoiseSource(torch.arange(2), (4,), F64, "cpu")
    with pytest.raises(ValueError, match=r"k_convention 'Paper' is not one of \['code', 'paper'\]"):
        GammaProcess(schedule, 0.001, "Paper")
    with pytest.raises(ValueError, match=r"theta_0=0 must be a positive finite number"):
        GammaProcess(schedule, 0)
    with pytest.raises(ValueError, match=r"proposals 0 must be a positive integer"):
        centred_gamma(1.0, 1.0, StepDraws(noise, 0), proposals=0)
    with pytest.raises(ValueError, match=r"Gamma shape must be positive"):
        centred_gamma(-1.0, 1.0, StepDraws(noise, 0))
    with pytest.raises(ValueError, match=r"phi2=1.5 must lie in \(0, 1\]"):
        mixture_components(1.5)
    with pytest.raises(ValueError, match=r"phi2=0 must lie in \(0, 1\]"):
        mixture_components(0)
    with pytest.raises(ValueError, match=r"p=1.0 must lie in \(0, 1\)"):
        mixture_components(0.5, 1.0)
    with pytest.raises(ValueError, match=r"step 100 must be an integer in \[0, 99\]"):
        initial_latent(noise, schedule, 0.001, step=100)
    den = DiscreteEpsDenoiser(PointMassEpsNetwork(C, schedule), schedule)
    grid = time_grid("even", 100, 5)
    x_T = torch.zeros(2, 1, 2, 2, dtype=F64)
    with pytest.raises(
        ValueError, match=r"variance 'large' is not one of \['beta', 'beta_tilde'\]"
    ):
        samplers.sample(den, x_T, grid, noise=noise, variance="large")
    with pytest.raises(ValueError, match=r"eta=-1.0 must be non-negative"):
        samplers.sample_mixture_ddim(den, x_T, grid, noise=noise, phi2=0.5, eta=-1.0)
    with pytest.raises(ValueError, match=r"phi2=2.0 must lie"):
        samplers.sample_mixture(den, x_T, grid, noise=noise, phi2=2.0)
    assert den.nfe == 0
