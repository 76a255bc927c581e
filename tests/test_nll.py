"""The VLB's pieces against closed forms, and the bound itself on Gaussian data with the exact network."""

import json
import math

import pytest
import torch

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.metrics.nll import discretized_gaussian_log_likelihood, gaussian_kl, standard_error, vlb_bits_per_dim


def test_gaussian_kl_matches_torch():
    q = torch.distributions.Normal(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    p = torch.distributions.Normal(torch.tensor(-0.1, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64))
    ours = gaussian_kl(q.mean, q.variance, p.mean, p.variance)
    assert torch.isclose(ours, torch.distributions.kl_divergence(q, p), rtol=1e-12)


def test_discretized_decoder_is_a_distribution_over_the_levels():
    max_level = 16
    levels = torch.arange(max_level + 1, dtype=torch.float64) / max_level * 2 - 1
    for mean, std in [(0.1, 0.05), (-0.97, 0.3), (2.0, 0.5)]:
        logp = discretized_gaussian_log_likelihood(
            levels, torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64), 1 / max_level
        )
        assert math.isclose(logp.exp().sum().item(), 1.0, rel_tol=1e-9)
    zero = torch.tensor(0.0, dtype=torch.float64)
    inner = discretized_gaussian_log_likelihood(zero, zero, torch.tensor(0.1, dtype=torch.float64), 1 / 16)
    expected = math.log(math.erf((1 / 16) / (0.1 * math.sqrt(2))))
    assert math.isclose(inner.item(), expected, rel_tol=1e-9)


def test_vlb_is_never_below_the_exact_nll_of_gaussian_data():
    """Data: a Gaussian quantised to 17 levels per dim; its exact NLL is the entropy of that discrete law."""
    torch.set_num_threads(1)
    mix = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                          0.16 * torch.eye(2, dtype=torch.float64)[None])
    levels = torch.arange(17, dtype=torch.float64) / 16 * 2 - 1
    p1 = discretized_gaussian_log_likelihood(
        levels, torch.zeros((), dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64), 1 / 16
    ).exp()
    exact_bpd = -(p1 * torch.log2(p1)).sum().item()  # per dim: the dims are independent
    g = torch.Generator().manual_seed(0)
    x0 = levels[torch.multinomial(p1, 4000 * 2, replacement=True, generator=g)].reshape(4000, 2)
    sch = DiscreteSchedule.named("linear", 1000)
    den = DiscreteEpsDenoiser(ExactEpsNetwork(mix, sch, (2,)), sch)
    for K in (10, 100):
        bpd = vlb_bits_per_dim(den, x0, time_grid("even", 1000, K), torch.arange(4000), max_level=16, clip_x0=False)
        for b in bpd.values():
            assert b.mean().item() > exact_bpd - 4 * b.std().item() / math.sqrt(len(b))
        # Analytic-DPM Table 1: at small K the larger variance beta gives the tighter bound.
        assert bpd["beta"].mean() < bpd["beta_tilde"].mean()


def test_the_standard_error_over_images_is_none_for_one_image_not_nan():
    bpd = torch.tensor([3.0, 4.0, 8.0])
    assert standard_error(bpd) == pytest.approx(float(bpd.std(correction=1)) / 3**0.5)
    record = json.dumps({"bpd_sem": standard_error(torch.tensor([3.5]))}, allow_nan=False)
    assert json.loads(record) == {"bpd_sem": None}
