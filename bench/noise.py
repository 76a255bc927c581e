"""Counter-based noise: sample i's noise at stream s is a pure function of (seed_i, s, element).

Each sample gets its own seed, so a sample never depends on the batch it is drawn in, the shard
it belongs to or the device (integer hashing is exact everywhere). This is what makes sharded,
resumable sampling reproduce a single run bit for bit.

The hash is Wellons' lowbias32 over two 32-bit key lanes (a 64-bit key per (seed, stream), so
distinct pairs do not collide), and normals come by Box-Muller. For speed (the noise of a DDPM
step must cost little beside the network):

- 32-bit lanes (int32 tensors holding the bit patterns) instead of int64, with in-place ops on
  two work buffers, so the elementwise hash moves half the bytes and allocates nothing;
- the multiply mod 2^32 is one wrapping int32 multiply (torch's integer multiply wraps on every
  backend, as the hardware does), and a logical right shift is an arithmetic shift then a mask;
- ``NoiseSource`` hashes the per-seed half of the keys once and keeps its work buffers, so a
  sampler step only pays for the per-stream half and the elementwise work;
- the uniform is built with exact steps only ((bits + 0.5) * 2^-32 is exact in float64), and the
  inexact functions (log, sqrt, cos) and the final products are the same torch ops on the same
  values as in bench.noise; the two uniform blocks of Box-Muller are contiguous here (strided
  there), which torch's elementwise kernels do not let change a result.

tests/perf/test_noise_fast.py checks torch.equal against the first, plain implementation
(tests/perf/noise_reference.py) over many seeds, streams and shapes on CPU. The int32 multiply
wraps in two's complement on CPU and CUDA alike, but the CUDA path has not been compared here.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_MULT_A = 0x7FEB352D
_MULT_B = 0x846CA68B - (1 << 32)  # the same multiplier mod 2^32, as a signed 32-bit constant
_LANE_MULT = 0x61C88647
_TWO_PI = 2.0 * math.pi


def _signed32(value: int) -> int:
    """The signed 32-bit integer with the bit pattern of ``value`` mod 2^32."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def _to_lanes(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as int32 tensors with the same bit patterns."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _hash32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """lowbias32 of bench.noise._hash32 in place on int32 lanes; ``tmp`` is scratch of x's shape."""
    for shift, mult in ((16, _MULT_A), (15, _MULT_B)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))
        x.mul_(mult)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp.bitwise_and_(0xFFFF))


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """The per-seed half of bench.noise._keys as int32 lanes [2, B] (rows: lane a, lane b)."""
    s = seeds.to(torch.int64)
    lo, hi = _to_lanes(s & _MASK32), _to_lanes((s >> 32) & _MASK32)
    k = torch.stack([lo ^ 0x2545F491, hi ^ _signed32(0x9E3779B9)])
    tmp = torch.empty_like(k)
    _hash32_(k, tmp)
    k[0] ^= hi
    k[1] ^= lo
    return _hash32_(k, tmp)


def stream_keys(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """bench.noise._keys(seeds, stream) as int32 lanes [2, B], from the per-seed keys.

    Each lane's xor with a stream word is one broadcast op against a [2, 1] column: a step's keys
    cost about 25 small ops, where indexing the lanes one by one (k[0] ^= ...) cost twice as many.
    """
    lo, hi = stream & _MASK32, (stream >> 32) & _MASK32
    k = keys ^ _lane_column(keys, lo, hi ^ 0x68E31DA4)
    tmp = torch.empty_like(k)
    _hash32_(k, tmp)
    k ^= _lane_column(keys, hi, lo)
    return _hash32_(k, tmp)


def _lane_column(keys: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """[[a], [b]] as int32 bit patterns on the keys' device, to xor lane a and lane b of [2, B] keys."""
    return torch.tensor([[_signed32(a)], [_signed32(b)]], dtype=torch.int32, device=keys.device)


class _Workspace:
    """Reused buffers for ``draws`` blocks of n values per sample, laid out [draws, B, n].

    Value j = h n + i of a sample (bench.noise's counter) sits at [h, sample, i], so each of
    Box-Muller's two uniform blocks is contiguous; hashing is elementwise, so layout changes no bit.
    """

    def __init__(self, batch: int, n: int, draws: int, device):
        j = torch.arange(draws * n, dtype=torch.int64, device=device).reshape(draws, 1, n)
        self.counter = j.to(torch.int32)
        self.counter_salt = _to_lanes((j * _LANE_MULT) & _MASK32)
        self.bits = torch.empty(draws, batch, n, dtype=torch.int32, device=device)
        self.scratch = torch.empty_like(self.bits)
        self.uniform = torch.empty(draws, batch, n, dtype=torch.float64, device=device)


def _bits_into(keys: torch.Tensor, work: _Workspace) -> torch.Tensor:
    """bench.noise.uniform_bits as int32 bit patterns, written into work.bits [draws, B, n]."""
    x = torch.bitwise_xor(keys[0][None, :, None], work.counter, out=work.bits)
    _hash32_(x, work.scratch)
    x ^= keys[1][None, :, None]
    x ^= work.counter_salt
    return _hash32_(x, work.scratch)


def _uniform_into(bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(bits + 0.5) / 2^32 into float64 ``out``: every step is exact, so any order gives the same doubles."""
    out.copy_(bits.view(torch.uint32))
    return out.add_(0.5).mul_(2.0**-32)


def _box_muller(u: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 log u[0]) cos(2 pi u[1]) from u [2, B, n], as bench.noise.normal; overwrites u[1]."""
    z = torch.log(u[0]).mul_(-2.0).sqrt_()
    return z.mul_(u[1].mul_(_TWO_PI).cos_())


def uniform_bits(seeds: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """bench.noise.uniform_bits: count 32-bit random integers per seed, as int64 [B, count]."""
    work = _Workspace(len(seeds), count, 1, seeds.device)
    bits = _bits_into(stream_keys(seed_keys(seeds), stream), work)
    return bits[0].view(torch.uint32).to(torch.int64)


def uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """bench.noise.uniform: U(0, 1) noise, open interval, float64 [B, *shape]."""
    work = _Workspace(len(seeds), math.prod(shape), 1, seeds.device)
    _bits_into(stream_keys(seed_keys(seeds), stream), work)
    return _uniform_into(work.bits, work.uniform)[0].reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """bench.noise.normal: N(0, 1) noise by Box-Muller of two uniform streams, float64 [B, *shape]."""
    work = _Workspace(len(seeds), math.prod(shape), 2, seeds.device)
    _bits_into(stream_keys(seed_keys(seeds), stream), work)
    return _box_muller(_uniform_into(work.bits, work.uniform)).reshape(len(seeds), *shape)


class NoiseSource:
    """bench.noise.NoiseSource with the per-seed keys hashed once and work buffers kept between steps.

    Not safe to share between threads (the buffers are reused); each returned tensor is fresh.
    """

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device):
        self.seeds = seeds.to(device=device, dtype=torch.int64)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self._keys = seed_keys(self.seeds)
        self._work: dict[int, _Workspace] = {}

    def latent(self) -> torch.Tensor:
        return self._normal(0)

    def normal(self, step: int, extra: int = 0) -> torch.Tensor:
        return self._normal(_stream(step, extra))

    def uniform(self, step: int, extra: int = 0) -> torch.Tensor:
        work = self._workspace(draws=1)
        _bits_into(stream_keys(self._keys, _stream(step, extra)), work)
        u = torch.empty_like(work.uniform[0])
        return _uniform_into(work.bits[0], u).reshape(len(self.seeds), *self.shape).to(self.dtype)

    def _normal(self, stream: int) -> torch.Tensor:
        work = self._workspace(draws=2)
        _bits_into(stream_keys(self._keys, stream), work)
        z = _box_muller(_uniform_into(work.bits, work.uniform))
        return z.reshape(len(self.seeds), *self.shape).to(self.dtype)

    def _workspace(self, draws: int) -> _Workspace:
        if draws not in self._work:
            self._work[draws] = _Workspace(len(self.seeds), math.prod(self.shape), draws, self.device)
        return self._work[draws]


def _stream(step: int, extra: int) -> int:
    if step < 0 or extra < 0:
        raise ValueError(f"noise step {step} and extra draw {extra} must be non-negative")
    return ((extra + 1) << 32) | (step + 1) if extra else step + 1
