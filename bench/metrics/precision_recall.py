"""Improved precision and recall (Kynkaanniemi et al. 2019) as guided-diffusion's evaluator computes them.

Each set's manifold is the union of balls around its points whose radius is the distance to the point's k-th
nearest neighbour in its own set; precision is the fraction of samples inside the reference manifold, recall the
fraction of references inside the sample manifold (Kynkaanniemi et al. 2019, Eqs. 1-3). Every detail follows
openai/guided-diffusion evaluations/evaluator.py (commit 22e0df81):
- distances are squared Euclidean, max(|u|^2 - 2 u.v + |v|^2, 0) (L414-430), computed on features cast to
  float16 and cast back to float32 unless a block holds a non-finite value, which is then recomputed in float32
  (DistanceBlock, L376-384); a ball holds a point at distance <= its radius (L390-391);
- a radius is the (k+1)-th smallest distance of a point's row, the point itself included (seq = 0..k, L254,
  L270-276), with k = 3 (nhood_sizes=(3,), L217) and no clamping (clamp_to_percentile=None, L218);
- the work goes in blocks of row_batch_size x col_batch_size = 10000 x 10000 (L215-216), references as rows of
  the precision / recall blocks (evaluate_pr, L343-359).
The float16 block is emulated exactly where features lie on the shards' 2^-12 grid (bench.metrics.shard_features):
each value there rounds to float16 on the same grid, so the dot products, summed in float64, are exact and every
rounding is one IEEE rounding to float16 (TF accumulates its float16 GEMM in float32 on the GPU, which agrees
except when its own rounding error crosses a float16 rounding boundary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# guided-diffusion evaluator.py ManifoldEstimator.__init__ (L212-220): nhood_sizes=(3,), 10000 x 10000 blocks.
DEFAULT_K = 3
DEFAULT_BATCH_SIZE = 10_000


def squared_distances(u: np.ndarray, v: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """[len(u), len(v)] squared distances as guided-diffusion's DistanceBlock gives them (float32 values).

    float16: |u|^2 and |v|^2 each the float16 sum of float16 squares, u.v rounded to float16, then
    (|u|^2 - 2 u.v) + |v|^2 rounded at each step (evaluator.py L420-428 on float16 inputs, L376-379); a block
    with a non-finite entry is recomputed from the float32 features the same way in float32 (L380-384). The dot
    products run in float64, in torch on ``device`` if one is given, else in numpy: the same bits on the grid.
    """
    half = _block(u, v, np.float16, device)
    if np.isfinite(half).all():
        return half.astype(np.float32)
    return _block(u, v, np.float32, device)


def _block(u: np.ndarray, v: np.ndarray, dtype: type, device: torch.device | None) -> np.ndarray:
    """max((|u|^2 - 2 u.v) + |v|^2, 0) with every operation rounded to ``dtype`` (Eq. at evaluator.py L428)."""
    with np.errstate(over="ignore", invalid="ignore"):
        u_d, v_d = np.asarray(u).astype(dtype), np.asarray(v).astype(dtype)
        norm_u = np.square(u_d).astype(np.float64).sum(axis=1).astype(dtype)
        norm_v = np.square(v_d).astype(np.float64).sum(axis=1).astype(dtype)
        dots = _dots(u_d.astype(np.float64), v_d.astype(np.float64), device).astype(dtype)
        out = (norm_u[:, None] - dtype(2) * dots) + norm_v[None, :]
        return np.maximum(out, dtype(0))


def _dots(u: np.ndarray, v: np.ndarray, device: torch.device | None) -> np.ndarray:
    """u v^T in float64: exact for features on the 2^-12 grid, so numpy and any device give the same bits."""
    if device is None:
        return u @ v.T
    import torch

    a, b = torch.from_numpy(u).to(device), torch.from_numpy(v).to(device)
    return (a @ b.T).cpu().numpy()


def manifold_radii(
    features: np.ndarray, *, k: int = DEFAULT_K, row_batch_size: int = DEFAULT_BATCH_SIZE,
    col_batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | None = None,
) -> np.ndarray:
    """Each point's squared distance to its k-th nearest neighbour in ``features`` (itself counted as the 0th),
    guided-diffusion's ManifoldEstimator.manifold_radii (L248-281) keeping k + 1 smallest per row, not whole rows."""
    x = np.asarray(features)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in 1..{n - 1} (one less than the {n} points), got {k}")
    radii = np.empty(n, dtype=np.float32)
    for r0 in range(0, n, row_batch_size):
        rows = x[r0 : r0 + row_batch_size]
        nearest = np.full((len(rows), 0), np.inf, dtype=np.float32)
        for c0 in range(0, n, col_batch_size):
            merged = np.concatenate([nearest, squared_distances(rows, x[c0 : c0 + col_batch_size], device)], axis=1)
            keep = min(k + 1, merged.shape[1])
            nearest = np.partition(merged, keep - 1, axis=1)[:, :keep]
        radii[r0 : r0 + len(rows)] = np.partition(nearest, k, axis=1)[:, k]
    return radii


def precision_recall(
    reference: np.ndarray, samples: np.ndarray, *, k: int = DEFAULT_K, row_batch_size: int = DEFAULT_BATCH_SIZE,
    col_batch_size: int = DEFAULT_BATCH_SIZE, device: torch.device | None = None,
) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference`` features (Kynkaanniemi et al. 2019, Eqs. 1-3),
    as guided-diffusion's Evaluator.compute_prec_recall (L194-202) and ManifoldEstimator.evaluate_pr (L325-359)."""
    ref, smp = np.asarray(reference), np.asarray(samples)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise ValueError(f"features must be [N, F] matrices of one F, got {list(ref.shape)} and {list(smp.shape)}")
    sizes = {"row_batch_size": row_batch_size, "col_batch_size": col_batch_size, "device": device}
    ref_radii = manifold_radii(ref, k=k, **sizes)
    smp_radii = manifold_radii(smp, k=k, **sizes)
    ref_in = np.zeros(len(ref), dtype=bool)  # inside some sample ball: recall
    smp_in = np.zeros(len(smp), dtype=bool)  # inside some reference ball: precision
    for r0 in range(0, len(ref), row_batch_size):
        r1 = r0 + row_batch_size
        for c0 in range(0, len(smp), col_batch_size):
            c1 = c0 + col_batch_size
            d = squared_distances(ref[r0:r1], smp[c0:c1], device)
            ref_in[r0:r1] |= (d <= smp_radii[None, c0:c1]).any(axis=1)
            smp_in[c0:c1] |= (d <= ref_radii[r0:r1, None]).any(axis=0)
    return float(smp_in.mean()), float(ref_in.mean())
