"""bench.core.noise's tensor lanes (the path of non-CPU devices) draw the kernel's and the reference's values, run here on CPU."""

import noise_reference as noise
import pytest
import torch

from bench.core import noise as noise_fast

SEEDS = torch.tensor([0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 17, 2**63 - 1, -(2**63), *range(5, 60)])
STREAMS = [0, 1, 17, 2**32 - 1, (1 << 32) | 5, (1 << 63) - 1]
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(params=["kernel", "tensor"])
def lanes(request, monkeypatch):
    if request.param == "tensor":
        monkeypatch.setattr(noise_fast, "_uses_kernel", lambda device: False)
    return request.param


def test_the_cpu_uses_the_kernel_unless_forced(lanes):
    blocks = noise_fast._Blocks(noise_fast.seed_keys(torch.arange(3)), 4, (1.0,), torch.float64)
    assert hasattr(blocks, "bits") == (lanes == "tensor")


def test_uniform_and_normal_equal_the_reference(lanes):
    for stream in STREAMS:
        for shape in [(1,), (3, 5, 7)]:
            for dtype in DTYPES:
                ref = noise.uniform(SEEDS, stream, shape, dtype)
                assert torch.equal(noise_fast.uniform(SEEDS, stream, shape, dtype), ref)
                assert torch.equal(noise_fast.normal(SEEDS, stream, shape, dtype), noise.normal(SEEDS, stream, shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_source_equals_the_reference(lanes, dtype):
    seeds = torch.arange(500, 600)
    fast = noise_fast.NoiseSource(seeds, (1, 8, 8), dtype, "cpu")
    ref = noise.NoiseSource(seeds, (1, 8, 8), dtype, "cpu")
    assert torch.equal(fast.latent(), ref.latent())
    kept = [fast.normal(k) for k in range(3)]
    for k, z in enumerate(kept):
        assert torch.equal(z, ref.normal(k))
        assert torch.equal(fast.uniform(k, extra=1), ref.uniform(k, extra=1))
