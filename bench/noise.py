"""Counter-based noise: sample i's noise at stream s is a pure function of (seed_i, s, element).

Each sample gets its own seed, so a sample never depends on the batch it is drawn in, the shard
it belongs to or the device (integer hashing is exact everywhere). This is what makes sharded,
resumable sampling reproduce a single run bit for bit.

The hash is Wellons' lowbias32 over two 32-bit key lanes (a 64-bit key per (seed, stream), so
distinct pairs do not collide), and normals come by Box-Muller. For speed (the noise of a DDPM
step must cost little beside the network):

- 32-bit lanes instead of int64, with in-place ops on two work buffers, so the elementwise hash
  moves half the bytes and allocates nothing: on CPU numpy uint32 arrays, whose right shift is
  logical and whose small ops cost a third of torch's dispatch; on other devices int32 tensors
  holding the bit patterns, where a logical right shift is an arithmetic shift then a mask;
- the multiply mod 2^32 is one wrapping 32-bit multiply (numpy's and torch's integer multiplies
  wrap, as the hardware does);
- ``NoiseSource`` hashes the per-seed half of the keys once and keeps its work buffers, so a
  sampler step only pays for the per-stream half and the elementwise work;
- the uniform is built with exact steps only ((bits + 0.5) * 2^-32 is exact in float64; so is
  (bits + 0.5) * (2 pi 2^-32), the same real as u * 2 pi, rounded once), and the inexact functions
  (log, sqrt, cos) and the final products are the same torch ops on the same values as in the
  reference; the two uniform blocks of Box-Muller are contiguous here (strided
  there), which torch's elementwise kernels do not let change a result.

tests/perf/test_noise_fast.py checks torch.equal against the first, plain implementation
(tests/perf/noise_reference.py) over many seeds, streams and shapes on CPU, with numpy lanes and
with the tensor lanes (tests/perf/test_noise_lanes.py). The int32 multiply wraps in two's
complement on CPU and CUDA alike, but the CUDA path has not been compared here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_MULT_A = 0x7FEB352D
_MULT_B = 0x846CA68B
_LANE_MULT = 0x61C88647
_UNIT = 2.0**-32
_TWO_PI_UNIT = 2.0 * math.pi * _UNIT  # exact: a power-of-two multiple of the double 2 pi


def _signed32(value: int) -> int:
    """The signed 32-bit integer with the bit pattern of ``value`` mod 2^32."""
    value &= _MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def _to_lanes(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as int32 tensors with the same bit patterns."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _numpy_lanes(device) -> bool:
    """Whether the lanes on ``device`` are numpy uint32 arrays (CPU) rather than int32 tensors."""
    return torch.device(device).type == "cpu"


def _lanes(x: torch.Tensor) -> np.ndarray | torch.Tensor:
    """int32 bit patterns as the lanes of their device: a uint32 view of CPU memory, else the tensor."""
    return x.numpy().view(np.uint32) if _numpy_lanes(x.device) else x


def _shift_right(x, shift: int, out):
    """Logical x >>> shift into ``out``: numpy's uint32 shift is; torch's int32 shift needs its sign bits masked."""
    if isinstance(x, np.ndarray):
        return np.right_shift(x, shift, out=out)
    return torch.bitwise_right_shift(x, shift, out=out).bitwise_and_((1 << (32 - shift)) - 1)


def _hash32_(x, tmp):
    """lowbias32 of the reference's _hash32 in place on 32-bit lanes; ``tmp`` is scratch of x's shape."""
    numpy_lanes = isinstance(x, np.ndarray)
    for shift, mult in ((16, _MULT_A), (15, _MULT_B)):
        x ^= _shift_right(x, shift, tmp)
        x *= np.uint32(mult) if numpy_lanes else _signed32(mult)
    x ^= _shift_right(x, 16, tmp)
    return x


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """The per-seed half of the reference's _keys as int32 lanes [2, B] (rows: lane a, lane b)."""
    s = seeds.to(torch.int64)
    lo, hi = _to_lanes(s & _MASK32), _to_lanes((s >> 32) & _MASK32)
    k = torch.stack([lo ^ 0x2545F491, hi ^ _signed32(0x9E3779B9)])
    tmp = torch.empty_like(k)
    _hash32_(k, tmp)
    k[0] ^= hi
    k[1] ^= lo
    return _hash32_(k, tmp)


def stream_keys(keys, stream: int):
    """The reference's _keys(seeds, stream) as lanes [2, B], from the per-seed keys (lanes of their device).

    Each lane's xor with a stream word is one broadcast op against a [2, 1] column: a step's keys
    cost about 25 small ops, where indexing the lanes one by one (k[0] ^= ...) cost twice as many.
    """
    lo, hi = stream & _MASK32, (stream >> 32) & _MASK32
    k = keys ^ _lane_column(keys, lo, hi ^ 0x68E31DA4)
    tmp = np.empty_like(k) if isinstance(k, np.ndarray) else torch.empty_like(k)
    _hash32_(k, tmp)
    k ^= _lane_column(keys, hi, lo)
    return _hash32_(k, tmp)


def _lane_column(keys, a: int, b: int):
    """[[a], [b]] as lanes like ``keys``, to xor lane a and lane b of [2, B] keys."""
    if isinstance(keys, np.ndarray):
        return np.array([[a], [b]], dtype=np.uint32)
    return torch.tensor([[_signed32(a)], [_signed32(b)]], dtype=torch.int32, device=keys.device)


class _Workspace:
    """Reused buffers for ``draws`` blocks of n values per sample, laid out [draws, B, n].

    Value j = h n + i of a sample (the reference's counter) sits at [h, sample, i], so each of
    Box-Muller's two uniform blocks is contiguous; hashing is elementwise, so layout changes no bit.
    ``bits`` are lanes of the device; ``bits_u32`` is the same memory as a torch uint32 tensor.
    """

    def __init__(self, batch: int, n: int, draws: int, device):
        j = torch.arange(draws * n, dtype=torch.int64, device=device).reshape(draws, 1, n)
        self.counter = _lanes(j.to(torch.int32))
        self.counter_salt = _lanes(_to_lanes((j * _LANE_MULT) & _MASK32))
        bits = torch.empty(draws, batch, n, dtype=torch.int32, device=device)
        self.bits, self.scratch = _lanes(bits), _lanes(torch.empty_like(bits))
        self.bits_u32 = bits.view(torch.uint32)
        self.uniform = torch.empty(draws, batch, n, dtype=torch.float64, device=device)


def _bits_into(keys, work: _Workspace) -> torch.Tensor:
    """The reference's uniform_bits as 32-bit patterns in work.bits [draws, B, n]; returns work.bits_u32."""
    x = work.bits
    x[...] = work.counter
    x ^= keys[0][None, :, None]
    _hash32_(x, work.scratch)
    x ^= keys[1][None, :, None]
    x ^= work.counter_salt
    _hash32_(x, work.scratch)
    return work.bits_u32


def _uniform_into(bits: torch.Tensor, out: torch.Tensor, scale: float = _UNIT) -> torch.Tensor:
    """(bits + 0.5) * scale into float64 ``out``: exact for scale 2^-32, so any order gives the same doubles."""
    out.copy_(bits)
    return out.add_(0.5).mul_(scale)


def _box_muller(bits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 log u0) cos(2 pi u1) from bits [2, B, n], as the reference's normal; u [2, B, n] is scratch."""
    out = u.copy_(bits).add_(0.5)
    z = torch.log(out[0].mul_(_UNIT)).mul_(-2.0).sqrt_()
    return z.mul_(out[1].mul_(_TWO_PI_UNIT).cos_())


def uniform_bits(seeds: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """The reference's uniform_bits: count 32-bit random integers per seed, as int64 [B, count]."""
    work = _Workspace(len(seeds), count, 1, seeds.device)
    return _bits_into(stream_keys(_lanes(seed_keys(seeds)), stream), work)[0].to(torch.int64)


def uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The reference's uniform: U(0, 1) noise, open interval, float64 [B, *shape]."""
    work = _Workspace(len(seeds), math.prod(shape), 1, seeds.device)
    bits = _bits_into(stream_keys(_lanes(seed_keys(seeds)), stream), work)
    return _uniform_into(bits, work.uniform)[0].reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The reference's normal: N(0, 1) noise by Box-Muller of two uniform streams, float64 [B, *shape]."""
    work = _Workspace(len(seeds), math.prod(shape), 2, seeds.device)
    bits = _bits_into(stream_keys(_lanes(seed_keys(seeds)), stream), work)
    return _box_muller(bits, work.uniform).reshape(len(seeds), *shape)


class NoiseSource:
    """bench.noise.NoiseSource with the per-seed keys hashed once and work buffers kept between steps.

    Not safe to share between threads (the buffers are reused); each returned tensor is fresh.
    """

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device):
        self.seeds = seeds.to(device=device, dtype=torch.int64)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self._keys = _lanes(seed_keys(self.seeds))
        self._work: dict[int, _Workspace] = {}

    def latent(self) -> torch.Tensor:
        return self._normal(0)

    def normal(self, step: int, extra: int = 0) -> torch.Tensor:
        return self._normal(_stream(step, extra))

    def uniform(self, step: int, extra: int = 0) -> torch.Tensor:
        work = self._workspace(draws=1)
        bits = _bits_into(stream_keys(self._keys, _stream(step, extra)), work)
        u = torch.empty_like(work.uniform[0])
        return _uniform_into(bits[0], u).reshape(len(self.seeds), *self.shape).to(self.dtype)

    def _normal(self, stream: int) -> torch.Tensor:
        work = self._workspace(draws=2)
        z = _box_muller(_bits_into(stream_keys(self._keys, stream), work), work.uniform)
        return z.reshape(len(self.seeds), *self.shape).to(self.dtype)

    def _workspace(self, draws: int) -> _Workspace:
        if draws not in self._work:
            self._work[draws] = _Workspace(len(self.seeds), math.prod(self.shape), draws, self.device)
        return self._work[draws]


def _stream(step: int, extra: int) -> int:
    if step < 0 or extra < 0:
        raise ValueError(f"noise step {step} and extra draw {extra} must be non-negative")
    return ((extra + 1) << 32) | (step + 1) if extra else step + 1
