"""bench.core.noise draws exactly the values of its plain reference implementation: same hash, keys and Box-Muller."""

import noise_reference as noise
import pytest
import torch

from bench.core import noise as noise_fast

SEED_SETS = {
    "consecutive": torch.arange(64),
    "scattered": torch.arange(57) * 7919 + 3,
    "extremes": torch.tensor([0, 1, -1, -5, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 17, 2**63 - 1, -(2**63)]),
    "random": torch.randint(-(2**63), 2**63 - 1, (61,), generator=torch.Generator().manual_seed(0)),
}
STREAMS = [0, 1, 17, 2**31 - 1, 2**31, 2**32 - 1, (1 << 32) | 5, (1 << 63) - 1]
SHAPES = [(1,), (7,), (1, 8, 8), (3, 5, 7)]
DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("name", sorted(SEED_SETS))
def test_uniform_and_normal_are_identical(name):
    seeds = SEED_SETS[name]
    for stream in STREAMS:
        for count in (1, 13, 128):
            # (bits + 0.5) 2^-32 in float64 is exact: equal uniforms are equal bits.
            ref_bits = noise.uniform_bits(seeds, stream, count)
            fast = noise_fast.uniform(seeds, stream, (count,))
            assert torch.equal(((fast * 2.0**32) - 0.5).to(torch.int64), ref_bits)
        for shape in SHAPES:
            for dtype in DTYPES:
                fast, ref = noise_fast.uniform(seeds, stream, shape, dtype), noise.uniform(seeds, stream, shape, dtype)
                assert fast.dtype == ref.dtype == dtype and fast.shape == ref.shape and torch.equal(fast, ref)
                fast, ref = noise_fast.normal(seeds, stream, shape, dtype), noise.normal(seeds, stream, shape, dtype)
                assert fast.dtype == ref.dtype == dtype and fast.shape == ref.shape
                assert torch.equal(fast, ref)


def test_large_batches_and_images_are_identical():
    seeds = torch.arange(1000, 3000)
    for dtype in DTYPES:
        assert torch.equal(noise_fast.normal(seeds, 3, (1, 8, 8), dtype), noise.normal(seeds, 3, (1, 8, 8), dtype))
        assert torch.equal(noise_fast.normal(seeds[:4], 9, (3, 32, 32), dtype), noise.normal(seeds[:4], 9, (3, 32, 32), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_source_is_identical_across_steps_and_draws(dtype):
    seeds = torch.arange(500, 600)
    fast = noise_fast.NoiseSource(seeds, (1, 8, 8), dtype, "cpu")
    ref = noise.NoiseSource(seeds, (1, 8, 8), dtype, "cpu")
    assert torch.equal(fast.latent(), ref.latent())
    kept = [fast.normal(k) for k in range(4)]
    kept_uniform = [fast.uniform(k) for k in range(4)]
    for k in range(4):
        assert torch.equal(fast.normal(k, extra=2), ref.normal(k, extra=2))
        assert torch.equal(fast.uniform(k, extra=1), ref.uniform(k, extra=1))
    # Reused work buffers must not alias what an earlier call returned.
    for k, (z, u) in enumerate(zip(kept, kept_uniform, strict=True)):
        assert z.dtype == u.dtype == dtype
        assert torch.equal(z, ref.normal(k))
        assert torch.equal(u, ref.uniform(k))


def test_noise_source_rejects_negative_steps_and_other_dtypes():
    src = noise_fast.NoiseSource(torch.arange(3), (4,), torch.float64, "cpu")
    with pytest.raises(ValueError, match="noise step -1 and extra draw 0 must be non-negative"):
        src.normal(-1)
    with pytest.raises(ValueError, match="noise step 2 and extra draw -3 must be non-negative"):
        src.uniform(2, extra=-3)
    with pytest.raises(ValueError, match=r"noise dtype torch.float16 is not one of torch.float32, torch.float64"):
        noise_fast.NoiseSource(torch.arange(3), (4,), torch.float16, "cpu")


def test_the_kernel_compiles_without_a_writable_cache(monkeypatch):
    """Where numba has no cache location (read-only install and home) the kernel compiles per process."""
    import numba

    from bench.core import noise_kernel

    real = numba.njit

    def njit(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function 'add_one': no locator available for file 'x.py'")
        return real(*args, **kwargs)

    monkeypatch.setattr(noise_kernel.numba, "njit", njit)

    def add_one(x):
        return x + 1

    assert noise_kernel._compiled(["int64(int64)"])(add_one)(41) == 42

    def broken(*args, **kwargs):
        raise RuntimeError("some other numba failure")

    monkeypatch.setattr(noise_kernel.numba, "njit", broken)
    with pytest.raises(RuntimeError, match="some other numba failure"):
        noise_kernel._compiled(["int64(int64)"])(add_one)
