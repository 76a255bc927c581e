"""The plain implementation of bench.core.noise, kept as the reference its fast paths must equal.

Counter-based noise: sample i's noise at stream s is a pure function of (seed_i, s, element).

Each sample gets its own seed, so a sample never depends on the batch it is drawn in, the shard
it belongs to or the device (integer hashing is exact everywhere). This is what makes sharded,
resumable sampling reproduce a single run bit for bit.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x < 2^32 held in int64, without signed overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer bijection with good avalanche (Wellons' lowbias32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seeds: torch.Tensor, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent 32-bit lanes per (seed, stream): a 64-bit key, so distinct pairs do not collide."""
    s = seeds.to(torch.int64)
    lo, hi = s & _MASK32, (s >> 32) & _MASK32
    stream_lo, stream_hi = stream & _MASK32, (stream >> 32) & _MASK32
    a = _hash32(_hash32(lo ^ 0x2545F491) ^ hi)
    b = _hash32(_hash32(hi ^ 0x9E3779B9) ^ lo)
    a = _hash32(_hash32(a ^ stream_lo) ^ stream_hi)
    b = _hash32(_hash32(b ^ stream_hi ^ 0x68E31DA4) ^ stream_lo)
    return a, b


def uniform_bits(seeds: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """count 32-bit random integers per seed, as int64 [B, count]."""
    a, b = _keys(seeds, stream)
    j = torch.arange(count, dtype=torch.int64, device=seeds.device)
    h = _hash32(a[:, None] ^ j[None, :])
    return _hash32(h ^ b[:, None] ^ ((j[None, :] * 0x61C88647) & _MASK32))


def uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """U(0, 1) noise, open interval: (bits + 0.5) / 2^32 in float64, then rounded to dtype, [B, *shape]."""
    n = math.prod(shape)
    bits = uniform_bits(seeds, stream, n)
    return ((bits.to(torch.float64) + 0.5) / 2.0**32).to(dtype).reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """N(0, 1) noise by Box-Muller with both outputs: m = ceil(n / 2) radius uniforms, then m angles, [B, *shape]."""
    n = math.prod(shape)
    m = (n + 1) // 2
    bits = uniform_bits(seeds, stream, 2 * m).to(torch.float64) + 0.5
    u = (bits[:, :m] / 2.0**32).to(dtype)
    theta = (bits[:, m:] * (2.0 * math.pi / 2.0**32)).to(dtype)
    r = torch.sqrt(-2.0 * torch.log(u))
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)], dim=1)[:, :n]
    return z.reshape(len(seeds), *shape)


class NoiseSource:
    """The noise of one batch of samples: ``normal(step)`` gives the fresh noise of sampler step ``step``.

    Stream 0 is the initial latent x_T; sampler step k uses stream k + 1 (and ``extra`` > 0 for a
    second draw within the same step, e.g. a corrector).
    """

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device):
        self.seeds = seeds.to(device=device, dtype=torch.int64)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device

    def latent(self) -> torch.Tensor:
        return normal(self.seeds, 0, self.shape, self.dtype)

    def normal(self, step: int, extra: int = 0) -> torch.Tensor:
        return normal(self.seeds, _stream(step, extra), self.shape, self.dtype)

    def uniform(self, step: int, extra: int = 0) -> torch.Tensor:
        return uniform(self.seeds, _stream(step, extra), self.shape, self.dtype)


def _stream(step: int, extra: int) -> int:
    if step < 0 or extra < 0:
        raise ValueError(f"noise step {step} and extra draw {extra} must be non-negative")
    return ((extra + 1) << 32) | (step + 1) if extra else step + 1
