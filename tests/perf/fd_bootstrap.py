"""Time one FD bootstrap resample by a backend's formula and by the whitened path; print their ratio.

    OMP_NUM_THREADS=1 python tests/perf/fd_bootstrap.py [--features 2048] [--samples 10000]

Features are synthetic Inception-like pool features (non-negative, correlated); the reference
statistics come from as many samples of the same law, shifted. The old path is fd_interval's per
resample: the count-weighted sums in numpy, then the backend's sqrtm (dpm-bench) or eig
(torch-fidelity) of Sigma_g Sigma_r. The new path is bench.metrics.whitened_fd on the CPU. The
estimate for other sample counts scales the measured GEMM rate by the GEMM's FLOPs
(2 * 0.632 n F^2 per resample: the rows a resample draws at least once) and adds the eigvalsh time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.metrics.bootstrap import BootstrapSpec, resample_indices
from bench.metrics.feature_stats import FeatureStats, frechet_distance_of_backend
from bench.metrics.whitened_fd import WhitenedFD

# The expected share of rows a bootstrap resample of n rows draws at least once: 1 - (1 - 1/n)^n.
DRAWN_SHARE = 1 - np.exp(-1)


def inception_like(rng: np.random.Generator, n: int, dim: int, shift: float) -> np.ndarray:
    mixing = rng.standard_normal((dim // 8, dim)) / np.sqrt(dim // 8)
    latent = rng.standard_normal((n, dim // 8)) @ mixing + 0.3 * rng.standard_normal((n, dim))
    return np.maximum(latent + shift, 0.0).astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Seconds per call of fn over `repeats` calls, and its last result."""
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=2048, help="feature dimension F (default 2048, Inception's)")
    p.add_argument("--samples", type=int, default=10000, help="samples n per cell (default 10000)")
    p.add_argument("--old-repeats", type=int, default=1, help="resamples timed per backend formula (default 1)")
    p.add_argument("--new-repeats", type=int, default=3, help="resamples timed on the whitened path (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (numpy's: OMP_NUM_THREADS)")
    p.add_argument("--estimate-samples", type=int, default=50000, help="n of the estimate (default 50000)")
    p.add_argument("--estimate-resamples", type=int, default=200, help="resamples of the estimate (default 200)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, dim = args.samples, args.features
    x = inception_like(rng, n, dim, 0.0).astype(np.float64)
    reference = FeatureStats.from_features(inception_like(rng, n, dim, 0.05))
    rows = resample_indices(n, BootstrapSpec(resamples=max(args.old_repeats, args.new_repeats)))
    counts = np.stack([np.bincount(r, minlength=n) for r in rows]).astype(np.float64)

    def old(backend: str, c: np.ndarray) -> float:
        stats = FeatureStats(n=n, sum=c @ x, sum_outer=x.T @ (c[:, None] * x))
        return frechet_distance_of_backend(backend, stats, reference)

    start = time.perf_counter()
    fd = WhitenedFD(x, reference, torch.device("cpu"))
    setup = time.perf_counter() - start
    new, new_values = timed(lambda: fd(counts[:1]), args.new_repeats)
    print(f"F = {dim}, n = {n}, torch threads {torch.get_num_threads()}")
    print(f"whitened: setup {setup:.2f} s once, then {new:.2f} s per resample")
    for backend in ("dpm-bench", "torch-fidelity"):
        t, value = timed(lambda b=backend: old(b, counts[0]), args.old_repeats)
        rel = abs(value - float(new_values[0])) / value
        print(f"{backend} formula: {t:.2f} s per resample, {t / new:.1f} x the whitened path "
              f"(relative difference of the FD {rel:.1e})")

    cov = torch.as_tensor(np.cov(x[:2000].T) + np.eye(dim))
    eig, _ = timed(lambda: torch.linalg.eigvalsh(cov), 3)
    z = torch.as_tensor(x[: min(n, 8000)])
    gemm, _ = timed(lambda: z.T @ z, 2)
    rate = 2 * len(z) * dim**2 / gemm
    big = args.estimate_samples
    per_resample = 2 * DRAWN_SHARE * big * dim**2 / rate + eig
    print(f"GEMM {rate / 1e9:.1f} GFLOP/s, eigvalsh of {dim} x {dim} {eig:.2f} s (float64, this CPU)")
    print(f"estimate at n = {big}: {per_resample:.1f} s per resample, "
          f"{args.estimate_resamples * per_resample / 60:.1f} min for {args.estimate_resamples} resamples")


if __name__ == "__main__":
    main()
