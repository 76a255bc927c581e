"""Bootstrap confidence intervals of a cell's FD and IS from its own per-sample features.

A resample draws the cell's n samples with replacement (Efron's nonparametric bootstrap) and
recomputes the metric from the resampled features. The interval is the basic bootstrap interval
(Davison & Hinkley 1997), 2 t - q_hi .. 2 t - q_lo around the full-sample value t: FD is biased
upwards by a finite sample, and a resample (with repeated rows) is biased more, so the plain
percentile interval sits above t, while the basic one moves back by that bias. The reference
statistics stay fixed: the interval is the spread due to the cell's finite sample, which is what
differs between two cells compared against the same reference. No network is evaluated: features
and IS inputs are those the cell's shards already hold.

An FD resample is computed one of two ways, with the same resamples and the same value up to
round-off: by the backend's own formula (a sqrtm or eig of a product of covariances: milliseconds
for the digits CNN's 64 features, tens of seconds of a core for Inception's 2048), or by whitening
with the fixed reference's square root (bench.metrics.whitened_fd: a GEMM and a symmetric eigvalsh
per resample, in torch on the job's device), which cells of WHITENED_MIN_FEATURES or more features use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bench.metrics.feature_stats import FeatureStats

if TYPE_CHECKING:
    import torch

DEFAULT_RESAMPLES = 200
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95

FD_BY_BACKEND = "backend formula per resample"
FD_WHITENED = "whitened by the reference's square root, eigvalsh per resample"
# The digits CNN's 64 features keep the backend's formula: its 200 resamples cost about what importing
# torch does, and the embedded default's intervals stay the backend formula's bit for bit. From 128 on,
# a resample's non-symmetric sqrtm / eig costs tens of times the whitened path (tests/perf/fd_bootstrap.py).
WHITENED_MIN_FEATURES = 128


def fd_method(features: int) -> str:
    """How a cell of this many features computes the FD of a resample: FD_BY_BACKEND or FD_WHITENED."""
    return FD_WHITENED if features >= WHITENED_MIN_FEATURES else FD_BY_BACKEND


@dataclass(frozen=True)
class BootstrapSpec:
    """How many resamples (0: no interval), from which seed, and the interval's coverage."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    level: float = DEFAULT_LEVEL

    def __post_init__(self) -> None:
        if self.resamples != 0 and self.resamples < 2:
            raise ValueError(f"bootstrap resamples must be 0 (no interval) or >= 2, got {self.resamples}")
        if not 0 < self.level < 1:
            raise ValueError(f"bootstrap level must lie in (0, 1), got {self.level}")

    def record(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level,
                "method": "basic bootstrap interval, samples resampled with replacement, reference fixed"}


def resample_indices(n: int, spec: BootstrapSpec) -> np.ndarray:
    """[resamples, n] row indices drawn with replacement from numpy's PCG64 at spec.seed."""
    return np.random.default_rng(spec.seed).integers(0, n, size=(spec.resamples, n))


def basic_interval(estimate: float, values: np.ndarray, level: float,
                   floor: float | None = None) -> tuple[float, float]:
    """2 t - q_hi, 2 t - q_lo for the (1 -/+ level) / 2 quantiles q of the resampled values; clipped at floor."""
    q_low, q_high = np.quantile(np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    low, high = 2 * estimate - float(q_high), 2 * estimate - float(q_low)
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    return low, high


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], float], spec: BootstrapSpec,
                       floor: float | None = None) -> tuple[float, float]:
    """Basic interval of statistic(rows) around statistic(all rows), over the spec's resamples of n rows."""
    values = [statistic(rows) for rows in resample_indices(n, spec)]
    return basic_interval(statistic(np.arange(n)), values, spec.level, floor)


def fd_interval(features: np.ndarray, reference: FeatureStats,
                distance: Callable[[FeatureStats, FeatureStats], float],
                spec: BootstrapSpec) -> tuple[float, float]:
    """Interval of distance(stats of resampled features, reference); counts keep each resample one matmul."""
    x = np.asarray(features, dtype=np.float64)

    def fd(rows: np.ndarray) -> float:
        counts = np.bincount(rows, minlength=len(x)).astype(np.float64)
        stats = FeatureStats(n=len(rows), sum=counts @ x, sum_outer=x.T @ (counts[:, None] * x))
        return distance(stats, reference)

    return bootstrap_interval(len(x), fd, spec, floor=0.0)


def fd_interval_whitened(features: np.ndarray, reference: FeatureStats, spec: BootstrapSpec,
                         device: torch.device) -> tuple[float, float]:
    """fd_interval's interval from the same resamples, each FD by bench.metrics.whitened_fd on device."""
    from bench.metrics.whitened_fd import WhitenedFD

    n = len(features)
    fd = WhitenedFD(features, reference, device)
    counts = np.stack([np.bincount(rows, minlength=n) for rows in resample_indices(n, spec)])
    return basic_interval(float(fd(np.ones((1, n)))[0]), fd(counts), spec.level, floor=0.0)


def cell_fd_interval(features: np.ndarray, reference: FeatureStats,
                     distance: Callable[[FeatureStats, FeatureStats], float], spec: BootstrapSpec,
                     threads: int) -> tuple[tuple[float, float], dict[str, str]]:
    """A cell's FD interval by fd_method of its feature count, and where it ran: {fd_method, fd_device}.

    The whitened path runs on this process's device (bench.runtime.device: the job's GPU, else the CPU
    with `threads` torch threads); the backend's formula runs in numpy on the host.
    """
    method = fd_method(np.shape(features)[1])
    if method == FD_BY_BACKEND:
        return fd_interval(features, reference, distance, spec), {"fd_method": method, "fd_device": "cpu"}
    import torch

    from bench.runtime.device import device_label, select_device

    torch.set_num_threads(threads)
    choice = select_device()
    interval = fd_interval_whitened(features, reference, spec, choice.device)
    return interval, {"fd_method": method, "fd_device": device_label(choice)}


def is_interval(is_values: np.ndarray, score: Callable[[np.ndarray], float],
                spec: BootstrapSpec) -> tuple[float, float]:
    """Interval of score(resampled IS inputs), the IS recomputed on each resample."""
    values = np.asarray(is_values)
    return bootstrap_interval(len(values), lambda rows: score(values[rows]), spec, floor=1.0)
