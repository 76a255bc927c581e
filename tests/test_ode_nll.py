"""PF-ODE likelihood of VE score models against exact Gaussian and Gaussian-mixture log-densities."""

import math

import pytest
import torch

from bench.core.noise import NoiseSource
from bench.data.gaussian_mixture import GaussianMixture
from bench.methods.ncsn import geometric_sigmas
from bench.metrics.ode_nll import ode_nll, offset_bits, uniform_dequantize

SIGMA_MIN, SIGMA_MAX = 1e-4, 1e3
GAUSS = GaussianMixture(
    torch.ones(1, dtype=torch.float64),
    torch.tensor([[0.3, -0.2]], dtype=torch.float64),
    torch.tensor([[[0.06, 0.03], [0.03, 0.03]]], dtype=torch.float64),
)


pytestmark = pytest.mark.usefixtures("fast_distributions")


class ExactVEScore:
    """grad log p_sigma of a Gaussian mixture, differentiable in x (the oracle ScoreFn)."""

    def __init__(self, mixture: GaussianMixture, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        self.mixture = mixture
        self.sigmas = geometric_sigmas(sigma_min, sigma_max, 100)
        self.nfe = 0

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.nfe += 1
        return self.mixture.noised(1.0, torch.as_tensor(sigma) ** 2).score(x)


def data(mixture: GaussianMixture, n: int, seed: int = 0) -> torch.Tensor:
    return mixture.sample(n, torch.Generator().manual_seed(seed))


def nats_per_sample(result: dict, d: int) -> torch.Tensor:
    """-log p in nats per sample, from bits/dim with the offset removed."""
    return (result["bpd"] - result["offset_bits"]) * d * math.log(2.0)


def test_exact_trace_equals_the_gaussian_negative_log_likelihood():
    """Continuous Gaussian data, VE prior N(0, sigma_max^2 I): -log N(x; m, C) up to the prior's mismatch.

    That mismatch is ~ m.z / sigma_max (the prior ignores the data mean m; z = x_T / sigma_max is
    about the standardised data) plus O(sigma_min^2 / C): at most |m| 4 / sigma_max = 1.5e-5 nats here.
    """
    x = data(GAUSS, 64)
    fn = ExactVEScore(GAUSS, SIGMA_MIN, 1e5)
    out = ode_nll(fn, x, torch.arange(64), estimator="exact", rtol=1e-9, atol=1e-9)
    exact = -GAUSS.log_prob(x)
    bound = torch.linalg.vector_norm(GAUSS.means[0]).item() * 4 / 1e5
    torch.testing.assert_close(nats_per_sample(out, 2), exact, rtol=0, atol=bound)
    assert out["offset_bits"] == 0.0 and out["dequantization"] == "none" and out["estimator"] == "exact"
    assert out["nfe"] > 0 and (out["rtol"], out["atol"]) == (1e-9, 1e-9)
    assert (out["sigma_min"], out["sigma_max"]) == pytest.approx((SIGMA_MIN, 1e5), rel=1e-12)


def test_exact_trace_with_the_exact_prior_is_exact_for_a_mixture():
    """With p_{sigma_max} exact the identity log p_{sigma_min} = log p_{sigma_max} + int div f is exact for any data."""
    mix = GaussianMixture.random(3, 2, seed=1)
    x = data(mix, 64)
    fn = ExactVEScore(mix, 0.01, 20.0)
    out = ode_nll(
        fn, x, torch.arange(64), estimator="exact", rtol=1e-9, atol=1e-9, prior_log_prob=mix.noised(1.0, 400.0).log_prob
    )
    torch.testing.assert_close(nats_per_sample(out, 2), -mix.noised(1.0, 1e-4).log_prob(x), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("estimator", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(estimator):
    """Per-sample Hutchinson values scatter around the exact ones; their mean agrees within 4 standard errors."""
    n = 400
    x = data(GAUSS, n, seed=1)
    seeds = torch.arange(n)
    fn = ExactVEScore(GAUSS)
    exact = ode_nll(fn, x, seeds, estimator="exact", rtol=1e-7, atol=1e-7)["bpd"]
    hutch = ode_nll(fn, x, seeds, estimator=estimator, rtol=1e-7, atol=1e-7)
    assert hutch["estimator"] == estimator
    diff = hutch["bpd"] - exact
    se = diff.std().item() / math.sqrt(n)
    assert se > 1e-4  # a real estimator: C has off-diagonal terms, so even Rademacher probes are noisy
    assert abs(diff.mean().item()) < 4 * se


def test_uniform_dequantization_and_the_offset():
    """bpd = -log2 p(y) / d + log2((M + 1) / 2), y = 2 (k + u) / (M + 1) - 1 inside level k's cell."""
    M, n = 16, 32
    levels = torch.randint(0, M + 1, (n, 2), generator=torch.Generator().manual_seed(0))
    x = 2.0 * levels.to(torch.float64) / M - 1.0
    seeds = torch.arange(100, 100 + n)
    u = NoiseSource(seeds, (2,), torch.float64, "cpu").uniform(0)
    y = uniform_dequantize(x, M, u)
    cell = torch.floor((y + 1.0) / 2.0 * (M + 1))
    assert torch.equal(cell, levels.to(torch.float64))
    mix = GaussianMixture.random(2, 2, seed=3)
    out = ode_nll(
        ExactVEScore(mix, 0.01, 20.0),
        x,
        seeds,
        estimator="exact",
        dequantization="uniform",
        max_level=M,
        rtol=1e-9,
        atol=1e-9,
        prior_log_prob=mix.noised(1.0, 400.0).log_prob,
    )
    assert out["offset_bits"] == pytest.approx(math.log2(8.5), rel=1e-15)
    want = -mix.noised(1.0, 1e-4).log_prob(y) / (2 * math.log(2.0)) + math.log2(8.5)
    torch.testing.assert_close(out["bpd"], want, rtol=1e-7, atol=1e-7)
    assert offset_bits(255) == 7.0 and offset_bits(None) == 0.0


def test_bad_arguments_are_rejected():
    fn = ExactVEScore(GAUSS)
    x = data(GAUSS, 4)
    seeds = torch.arange(4)
    with pytest.raises(ValueError, match="'skilling' is not one of"):
        ode_nll(fn, x, seeds, estimator="skilling")
    with pytest.raises(ValueError, match="needs the data's max_level"):
        ode_nll(fn, x, seeds, dequantization="uniform")
    with pytest.raises(ValueError, match="not on the grid 2 k / 16 - 1"):
        ode_nll(fn, x, seeds, dequantization="uniform", max_level=16)
    with pytest.raises(ValueError, match="sigma_min=5.0 must be below sigma_max=1.0"):
        ode_nll(fn, x, seeds, sigma_min=5.0, sigma_max=1.0)

    class Frozen(ExactVEScore):
        @torch.no_grad()
        def __call__(self, x, sigma):
            return super().__call__(x, sigma)

    with pytest.raises(ValueError, match="not differentiable in x"):
        ode_nll(Frozen(GAUSS), x, seeds)
