"""Bootstrap confidence intervals of a cell's FD and IS from its own per-sample features.

A resample draws the cell's n samples with replacement (Efron's nonparametric bootstrap) and
recomputes the metric from the resampled features. The interval is the basic bootstrap interval
(Davison & Hinkley 1997), 2 t - q_hi .. 2 t - q_lo around the full-sample value t: FD is biased
upwards by a finite sample, and a resample (with repeated rows) is biased more, so the plain
percentile interval sits above t, while the basic one moves back by that bias. The reference
statistics stay fixed: the interval is the spread due to the cell's finite sample, which is what
differs between two cells compared against the same reference. No network is evaluated: features
and IS inputs are those the cell's shards already hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.metrics.feature_stats import FeatureStats

DEFAULT_RESAMPLES = 200
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95


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


def is_interval(is_values: np.ndarray, score: Callable[[np.ndarray], float],
                spec: BootstrapSpec) -> tuple[float, float]:
    """Interval of score(resampled IS inputs), the IS recomputed on each resample."""
    values = np.asarray(is_values)
    return bootstrap_interval(len(values), lambda rows: score(values[rows]), spec, floor=1.0)
