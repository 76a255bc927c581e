"""Per-sample counter-based noise: correct law, independent of the batch a sample is drawn in."""

import numpy as np
import torch
from scipy import stats

from bench.core.noise import NoiseSource, normal, uniform


def test_normal_is_standard_gaussian():
    z = normal(torch.arange(4000), 3, (64,)).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)


def test_uniform_is_uniform_and_open():
    u = uniform(torch.arange(2000), 1, (50,)).flatten().numpy()
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_a_sample_does_not_depend_on_its_batch():
    seeds = torch.arange(100, 200)
    whole = NoiseSource(seeds, (1, 8, 8), torch.float64, "cpu")
    part = NoiseSource(seeds[37:61], (1, 8, 8), torch.float64, "cpu")
    assert torch.equal(whole.latent()[37:61], part.latent())
    assert torch.equal(whole.normal(5)[37:61], part.normal(5))


def test_streams_and_seeds_are_independent():
    seeds = torch.arange(2000)
    a, b = normal(seeds, 1, (16,)), normal(seeds, 2, (16,))
    c = normal(seeds + 2000, 1, (16,))
    for x, y in ((a, b), (a, c)):
        r = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
        assert abs(r) < 5 / np.sqrt(x.numel())
    src = NoiseSource(seeds[:4], (8,), torch.float64, "cpu")
    assert not torch.equal(src.normal(0), src.normal(0, extra=1))
    assert not torch.equal(src.latent(), src.normal(0))


def test_large_seeds_differ_in_high_bits():
    s = torch.tensor([5, 5 + (1 << 32)])
    z = normal(s, 1, (8,))
    assert not torch.equal(z[0], z[1])


def test_box_muller_pairs_are_independent_normals():
    """Values p and m + p share one radius (both Box-Muller outputs): uncorrelated, and so are their squares."""
    z = normal(torch.arange(20000), 5, (64,)).numpy()
    a, b = z[:, :32].ravel(), z[:, 32:].ravel()
    bound = 5 / np.sqrt(a.size)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    assert abs(np.corrcoef(a**2, b**2)[0, 1]) < bound
    assert abs((a**2 * b**2).mean() - 1) < 5 * np.sqrt(8 / a.size)  # E[z^2 w^2] = 1 for independent normals


def test_float32_draws_are_the_float64_draws_rounded_through_float32_math():
    seeds = torch.arange(300)
    z64, z32 = normal(seeds, 2, (3, 7), torch.float64), normal(seeds, 2, (3, 7), torch.float32)
    assert z32.dtype == torch.float32 and z32.shape == z64.shape == (300, 3, 7)
    assert torch.allclose(z32.double(), z64, rtol=1e-5, atol=1e-5)
    u64, u32 = uniform(seeds, 2, (5,), torch.float64), uniform(seeds, 2, (5,), torch.float32)
    assert torch.equal(u32, u64.float())
