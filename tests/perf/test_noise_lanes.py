"""bench.noise's tensor lanes (the path of non-CPU devices) draw the reference's doubles too, run here on CPU."""

import noise_reference as noise
import numpy as np
import pytest
import torch

from bench import noise as noise_fast

SEEDS = torch.tensor([0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 17, 2**63 - 1, -(2**63), *range(5, 60)])
STREAMS = [0, 1, 17, 2**32 - 1, (1 << 32) | 5, (1 << 63) - 1]


@pytest.fixture(params=["numpy", "tensor"])
def lanes(request, monkeypatch):
    if request.param == "tensor":
        monkeypatch.setattr(noise_fast, "_numpy_lanes", lambda device: False)
    return request.param


def test_lanes_are_the_device_default_unless_forced(lanes):
    keys = noise_fast._lanes(noise_fast.seed_keys(torch.arange(3)))
    assert isinstance(keys, np.ndarray) == (lanes == "numpy")


def test_bits_uniform_and_normal_equal_the_reference(lanes):
    for stream in STREAMS:
        assert torch.equal(noise_fast.uniform_bits(SEEDS, stream, 13), noise.uniform_bits(SEEDS, stream, 13))
        for shape in [(1,), (3, 5, 7)]:
            assert torch.equal(noise_fast.uniform(SEEDS, stream, shape), noise.uniform(SEEDS, stream, shape))
            assert torch.equal(noise_fast.normal(SEEDS, stream, shape), noise.normal(SEEDS, stream, shape))


def test_noise_source_equals_the_reference(lanes):
    seeds = torch.arange(500, 600)
    fast = noise_fast.NoiseSource(seeds, (1, 8, 8), torch.float64, "cpu")
    ref = noise.NoiseSource(seeds, (1, 8, 8), torch.float64, "cpu")
    assert torch.equal(fast.latent(), ref.latent())
    kept = [fast.normal(k) for k in range(3)]
    for k, z in enumerate(kept):
        assert torch.equal(z, ref.normal(k))
        assert torch.equal(fast.uniform(k, extra=1), ref.uniform(k, extra=1))
