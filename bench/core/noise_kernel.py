"""bench.core.noise's CPU kernel: a step's keys, both hash rounds and the uniforms in one pass per sample (numba).

Run as separate numpy ops, the hash moved every 32-bit value through memory about twenty times and
cost more than torch.randn; fused, the values stay in vector registers and a step's uniforms cost a
fraction of the embedded network's forward pass. The integer arithmetic is exactly that of
bench.core.noise's tensor lanes (and of tests/perf/noise_reference.py): the same bits on every path.
"""

from __future__ import annotations

import numba
import numpy as np

from bench.core.noise_hash import LANE_MULT, MULT_A, MULT_B, STREAM_SALT

_MULT_A = np.uint32(MULT_A)
_MULT_B = np.uint32(MULT_B)


@numba.njit(inline="always")
def _lowbias32(x):
    """Wellons' lowbias32 on one uint32 (every product truncated back to 32 bits, as the hardware wraps)."""
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * _MULT_A)
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32(x * _MULT_B)
    return np.uint32(x ^ (x >> np.uint32(16)))


# Compiled eagerly for both output dtypes (from numba's on-disk cache after the first run), so that the
# warm worker (bench.runtime.warm_worker), which imports this module before it forks, hands every job a ready kernel.
_SIGNATURES = [
    f"void(uint32[::1], uint32[::1], int64, int64, float64[::1], {dtype}[:, :, ::1])"
    for dtype in ("float32", "float64")
]


def _compiled(signatures: list[str]):
    """numba.njit with on-disk caching where numba finds a writable cache location, else without."""

    def compile_(fn):
        try:
            return numba.njit(signatures, nogil=True, boundscheck=False, cache=True)(fn)
        except RuntimeError as err:
            # A read-only install without a writable home (or NUMBA_CACHE_DIR): compile in every process.
            if "cannot cache" not in str(err):
                raise
            return numba.njit(signatures, nogil=True, boundscheck=False)(fn)

    return compile_


@_compiled(_SIGNATURES)
def uniform_blocks(seed_a, seed_b, stream_lo, stream_hi, scales, out):
    """out[d, i, p] = (bits_i(d m + p) + 0.5) * scales[d], rounded once to out's dtype; m = out.shape[2].

    seed_a, seed_b: the per-seed key lanes (bench.core.noise.seed_keys) as uint32 [B]; the stream's half of
    the keys (bench.core.noise.stream_keys) is hashed here, once per sample.
    """
    blocks, batch, m = out.shape
    for i in range(batch):
        a = _lowbias32(np.uint32(seed_a[i] ^ stream_lo))
        b = _lowbias32(np.uint32(seed_b[i] ^ stream_hi ^ STREAM_SALT))
        a = _lowbias32(np.uint32(a ^ stream_hi))
        b = _lowbias32(np.uint32(b ^ stream_lo))
        for d in range(blocks):
            scale = scales[d]
            for p in range(m):
                j = np.uint32(d * m + p)
                x = _lowbias32(np.uint32(j ^ a))
                x = _lowbias32(np.uint32(x ^ b ^ np.uint32(j * LANE_MULT)))
                out[d, i, p] = (np.float64(x) + 0.5) * scale
