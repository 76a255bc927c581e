"""Counter-based noise: sample i's noise at stream s is a pure function of (seed_i, s, element).

Each sample gets its own seed, so a sample never depends on the batch it is drawn in, the shard
it belongs to or the device (integer hashing is exact everywhere). This is what makes sharded,
resumable sampling reproduce a single run bit for bit.

The hash is Wellons' lowbias32 over two 32-bit key lanes (a 64-bit key per (seed, stream), so
distinct pairs do not collide). Uniform j of a sample is (bits(j) + 0.5) 2^-32, exact in float64.
Normals come by Box-Muller with both outputs: n values take m = ceil(n / 2) pairs, the radius
uniforms at counters [0, m), the angles at [m, 2m), and z = (r cos theta, r sin theta)[:n] with
r = sqrt(-2 log u) in the requested dtype, so a float32 sampler pays for float32 transcendentals.

For speed (the noise of a DDPM step must cost little beside the network):

- on CPU, bench.core.noise_kernel fuses the stream keys, both hash rounds and the uniforms in one numba
  pass; elsewhere the hash runs as in-place int32 tensor ops on two work buffers (a logical right
  shift is an arithmetic shift then a mask; the multiply wraps in two's complement);
- ``NoiseSource`` hashes the per-seed half of the keys once and keeps its work buffers;
- the angle is (bits + 0.5) (2 pi 2^-32) in float64, the same real as 2 pi u rounded once, and each
  uniform is rounded once to the dtype, so no path can round differently.

tests/perf/test_noise_fast.py checks torch.equal against the plain implementation
(tests/perf/noise_reference.py) over many seeds, streams, shapes and dtypes on CPU, with the kernel
and with the tensor lanes. Transcendentals (log, cos, sin) are the device's own, so a CUDA draw may
differ from a CPU draw in the last bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.core.noise_hash import LANE_MULT, MASK32, MULT_A, MULT_B, STREAM_SALT

_UNIT = 2.0**-32
_TWO_PI_UNIT = 2.0 * math.pi * _UNIT  # exact: a power-of-two multiple of the double 2 pi
_NORMAL_SCALES = (_UNIT, _TWO_PI_UNIT)  # Box-Muller's radius and angle blocks


def _signed32(value: int) -> int:
    """The signed 32-bit integer with the bit pattern of ``value`` mod 2^32."""
    value &= MASK32
    return value - (1 << 32) if value >= 1 << 31 else value


def _to_lanes(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as int32 tensors with the same bit patterns."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _uses_kernel(device) -> bool:
    """Whether noise on ``device`` comes from the fused CPU kernel (else from int32 tensor lanes)."""
    return torch.device(device).type == "cpu"


def _shift_right(x: torch.Tensor, shift: int, out: torch.Tensor) -> torch.Tensor:
    """Logical x >>> shift into ``out``: int32's shift is arithmetic, so its sign bits are masked off."""
    return torch.bitwise_right_shift(x, shift, out=out).bitwise_and_((1 << (32 - shift)) - 1)


def _hash32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on int32 lanes; ``tmp`` is scratch of x's shape."""
    for shift, mult in ((16, MULT_A), (15, MULT_B)):
        x ^= _shift_right(x, shift, tmp)
        x *= _signed32(mult)
    x ^= _shift_right(x, 16, tmp)
    return x


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """The per-seed half of the keys as int32 lanes [2, B] (rows: lane a, lane b)."""
    s = seeds.to(torch.int64)
    lo, hi = _to_lanes(s & MASK32), _to_lanes((s >> 32) & MASK32)
    k = torch.stack([lo ^ 0x2545F491, hi ^ _signed32(0x9E3779B9)])
    tmp = torch.empty_like(k)
    _hash32_(k, tmp)
    k[0] ^= hi
    k[1] ^= lo
    return _hash32_(k, tmp)


def stream_keys(keys: torch.Tensor, stream: int) -> torch.Tensor:
    """The keys of (seed, stream) as int32 lanes [2, B] from the per-seed keys (noise_kernel does the same)."""
    lo, hi = stream & MASK32, (stream >> 32) & MASK32
    k = keys ^ _lane_column(keys, lo, hi ^ STREAM_SALT)
    tmp = torch.empty_like(k)
    _hash32_(k, tmp)
    k ^= _lane_column(keys, hi, lo)
    return _hash32_(k, tmp)


def _lane_column(keys: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """[[a], [b]] as int32 lanes, to xor lane a and lane b of [2, B] keys in one op."""
    return torch.tensor([[_signed32(a)], [_signed32(b)]], dtype=torch.int32, device=keys.device)


class _Blocks:
    """Uniforms in ``blocks`` blocks of m per sample, [blocks, B, m], with reused buffers.

    Value j = d m + p of a sample sits at [d, sample, p], so each block is contiguous; block d is
    scaled by scales[d]. On CPU the fused kernel fills ``out``; elsewhere the int32 lanes are hashed
    in ``bits`` and converted through float64 ``wide``.
    """

    def __init__(self, keys: torch.Tensor, m: int, scales: tuple[float, ...], dtype: torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"noise dtype {dtype} is not one of torch.float32, torch.float64")
        self.keys = keys
        blocks, batch, device = len(scales), keys.shape[1], keys.device
        self.out = torch.empty(blocks, batch, m, dtype=dtype, device=device)
        if _uses_kernel(device):
            # Imported here: loading numba and the compiled kernel takes most of a second, which jobs on
            # other devices need not pay (the warm worker preloads it for local runs).
            from bench.core.noise_kernel import uniform_blocks

            self.kernel = uniform_blocks
            self.key_lanes = keys.numpy().view(np.uint32)
            self.scale_array = np.asarray(scales, dtype=np.float64)
            self.out_array = self.out.numpy()
        else:
            self.counter = torch.arange(blocks * m, dtype=torch.int32, device=device).reshape(blocks, 1, m)
            j = torch.arange(blocks * m, dtype=torch.int64, device=device).reshape(blocks, 1, m)
            self.counter_salt = _to_lanes((j * LANE_MULT) & MASK32)
            self.bits = torch.empty(blocks, batch, m, dtype=torch.int32, device=device)
            self.scratch = torch.empty_like(self.bits)
            self.wide = torch.empty(blocks, batch, m, dtype=torch.float64, device=device)
            self.scale_column = torch.tensor(scales, dtype=torch.float64, device=device).reshape(blocks, 1, 1)

    def fill(self, stream: int) -> torch.Tensor:
        """The uniforms of ``stream`` in self.out (overwritten by the next fill)."""
        if _uses_kernel(self.out.device):
            lo, hi = stream & MASK32, (stream >> 32) & MASK32
            self.kernel(self.key_lanes[0], self.key_lanes[1], lo, hi, self.scale_array, self.out_array)
            return self.out
        keys, x = stream_keys(self.keys, stream), self.bits
        x[...] = self.counter
        x ^= keys[0][None, :, None]
        _hash32_(x, self.scratch)
        x ^= keys[1][None, :, None]
        x ^= self.counter_salt
        _hash32_(x, self.scratch)
        self.wide.copy_(x.view(torch.uint32))
        return self.out.copy_(self.wide.add_(0.5).mul_(self.scale_column))


def _box_muller(u: torch.Tensor, n: int) -> torch.Tensor:
    """(r cos theta, r sin theta)[:n] per sample, r = sqrt(-2 log u[0]), theta = u[1]: a fresh [B, n] tensor.

    u [2, B, m] is consumed. The transcendentals run on contiguous blocks and only the products are
    written into the halves of each row (torch's in-place ops on such strided views are several times slower).
    """
    m = u.shape[2]
    r = u[0].log_().mul_(-2.0).sqrt_()
    z = torch.empty(u.shape[1], 2 * m, dtype=u.dtype, device=u.device)
    trig = torch.cos(u[1])
    torch.mul(trig, r, out=z[:, :m])
    torch.mul(torch.sin(u[1], out=trig), r, out=z[:, m:])
    return z if n == 2 * m else z[:, :n].contiguous()


def uniform(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64):
    """U(0, 1) noise, open interval: (bits + 0.5) 2^-32 rounded to ``dtype``, [B, *shape]."""
    blocks = _Blocks(seed_keys(seeds), math.prod(shape), (_UNIT,), dtype)
    return blocks.fill(stream)[0].reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64):
    """N(0, 1) noise by Box-Muller with both outputs (module docstring), in ``dtype``, [B, *shape]."""
    n = math.prod(shape)
    blocks = _Blocks(seed_keys(seeds), (n + 1) // 2, _NORMAL_SCALES, dtype)
    return _box_muller(blocks.fill(stream), n).reshape(len(seeds), *shape)


class NoiseSource:
    """The noise of one batch of samples: ``normal(step)`` gives the fresh noise of sampler step ``step``.

    Stream 0 is the initial latent x_T; sampler step k uses stream k + 1 (and ``extra`` > 0 for a
    second draw within the same step, e.g. a corrector). The per-seed keys are hashed once and the
    work buffers kept, so a source is not safe to share between threads; each returned tensor is fresh.
    """

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, device):
        self.seeds = seeds.to(device=device, dtype=torch.int64)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self._keys = seed_keys(self.seeds)
        self._n = math.prod(self.shape)
        self._normal_blocks = _Blocks(self._keys, (self._n + 1) // 2, _NORMAL_SCALES, dtype)
        self._uniform_blocks: _Blocks | None = None
        self._views: dict[torch.dtype, NoiseSource] = {}

    def with_dtype(self, dtype: torch.dtype) -> NoiseSource:
        """The same draws (same seeds, streams and shape) in ``dtype``: one source per dtype, made once."""
        if dtype == self.dtype:
            return self
        if dtype not in self._views:
            self._views[dtype] = NoiseSource(self.seeds, self.shape, dtype, self.device)
        return self._views[dtype]

    def latent(self) -> torch.Tensor:
        return self._normal(0)

    def normal(self, step: int, extra: int = 0) -> torch.Tensor:
        return self._normal(_stream(step, extra))

    def uniform(self, step: int, extra: int = 0) -> torch.Tensor:
        return self._uniform(_stream(step, extra))

    def latent_uniform(self) -> torch.Tensor:
        """U(0, 1) on the latent's stream 0, for a chain that starts from uniform noise (NCSN) instead of latent()."""
        return self._uniform(0)

    def _uniform(self, stream: int) -> torch.Tensor:
        if self._uniform_blocks is None:
            self._uniform_blocks = _Blocks(self._keys, self._n, (_UNIT,), self.dtype)
        u = self._uniform_blocks.fill(stream)[0]
        return u.clone().reshape(len(self.seeds), *self.shape)

    def _normal(self, stream: int) -> torch.Tensor:
        z = _box_muller(self._normal_blocks.fill(stream), self._n)
        return z.reshape(len(self.seeds), *self.shape)


def _stream(step: int, extra: int) -> int:
    if step < 0 or extra < 0:
        raise ValueError(f"noise step {step} and extra draw {extra} must be non-negative")
    return ((extra + 1) << 32) | (step + 1) if extra else step + 1
