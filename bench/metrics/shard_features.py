"""Per-shard features for FD and IS: exact float64 sums that merge to the same bits for any shard count.

Features are rounded to multiples of 2^-FIXED_POINT_BITS before they are summed. With |x| below
FEATURE_LIMIT every product x_i x_j is an integer multiple of 2^-2b below 2^36 of those units, so every
partial sum of up to MAX_EXACT_SAMPLES products is exact in float64: BLAS order, batch size and the
way samples are split into shards cannot change a bit of the merged sums. The rounding (2.4e-4) adds
the same 5e-9 variance to every feature of both sets, far below any FD digit that is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.metrics.feature_stats import FeatureStats
from bench.runtime.io import CorruptFileError, atomic_npz, load_npz

FIXED_POINT_BITS = 12
FEATURE_LIMIT = 2.0**6
MAX_EXACT_SAMPLES = 2**17
IS_KINDS = ("logits", "probs")


def fixed_point(features: np.ndarray) -> np.ndarray:
    """Features rounded to the 2^-FIXED_POINT_BITS grid (float64); ValueError if any |x| >= FEATURE_LIMIT."""
    x = np.asarray(features, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("features hold non-finite values")
    largest = float(np.abs(x).max(initial=0.0))
    if largest >= FEATURE_LIMIT:
        raise ValueError(f"a feature of magnitude {largest:g} is outside the exact-sum range |x| < {FEATURE_LIMIT:g}")
    scale = 2.0**FIXED_POINT_BITS
    return np.round(x * scale) / scale


def exact_stats(features: np.ndarray) -> FeatureStats:
    """FeatureStats of fixed-point features; the sums are exact for up to MAX_EXACT_SAMPLES rows."""
    if len(features) > MAX_EXACT_SAMPLES:
        raise ValueError(f"exact sums take at most {MAX_EXACT_SAMPLES} rows at once, got {len(features)}")
    return FeatureStats.from_features(fixed_point(features))


@dataclass(frozen=True, eq=False)
class ShardFeatures:
    """One sample shard's feature sums and IS inputs, with what the cell record needs from the shard."""

    stats: FeatureStats
    is_kind: str
    is_values: np.ndarray
    seeds: np.ndarray
    extractor: str
    nfe: int
    grid: np.ndarray
    sample_wall_seconds: float
    feature_wall_seconds: float
    sample_device_seconds: float
    feature_device_seconds: float
    devices: tuple[str, ...]
    speeds: tuple[str, ...]  # distinct JSON records of the speed options the shards' sampling applied
    # Per-sample fixed-point features for the bootstrap interval; float32 holds them exactly
    # (|x| < 2^6 on a 2^-12 grid needs 18 of float32's 24 significand bits). None in older files.
    features: np.ndarray | None = None

    def save(self, path: Path) -> Path:
        """Write one .npz atomically (FeatureStats arrays plus IS inputs and shard metadata)."""
        return atomic_npz(
            Path(path),
            status=np.array("ok"),
            n=np.array(self.stats.n, dtype=np.int64),
            sum=self.stats.sum,
            sum_outer=self.stats.sum_outer,
            sha256=np.array(self.stats.content_hash()),
            is_kind=np.array(self.is_kind),
            is_values=np.asarray(self.is_values, dtype=np.float64),
            seeds=np.asarray(self.seeds, dtype=np.int64),
            extractor=np.array(self.extractor),
            nfe=np.array(self.nfe, dtype=np.int64),
            grid=np.asarray(self.grid),
            sample_wall_seconds=np.array(self.sample_wall_seconds),
            feature_wall_seconds=np.array(self.feature_wall_seconds),
            sample_device_seconds=np.array(self.sample_device_seconds),
            feature_device_seconds=np.array(self.feature_device_seconds),
            devices=np.array(self.devices),
            speeds=np.array(self.speeds),
            **({} if self.features is None else {"features": np.asarray(self.features, dtype=np.float32)}),
        )

    @classmethod
    def load(cls, path: Path) -> ShardFeatures:
        """Read a file written by save; a failed shard raises ShardFailed with its error message."""
        data = load_npz(Path(path), required=("status",))
        if str(data["status"]) != "ok":
            raise ShardFailed(str(data["error"]))
        keys = (
            "n",
            "sum",
            "sum_outer",
            "sha256",
            "is_kind",
            "is_values",
            "seeds",
            "extractor",
            "nfe",
            "grid",
            "sample_wall_seconds",
            "feature_wall_seconds",
            "sample_device_seconds",
            "feature_device_seconds",
            "devices",
            "speeds",
        )
        missing = [k for k in keys if k not in data]
        if missing:
            raise CorruptFileError(f"{path} lacks arrays {missing}: it is not a features file")
        stats = FeatureStats(n=int(data["n"]), sum=data["sum"], sum_outer=data["sum_outer"])
        if stats.content_hash() != str(data["sha256"]):
            raise CorruptFileError(f"{path}: the feature sums do not match their recorded sha256")
        if str(data["is_kind"]) not in IS_KINDS or len(data["is_values"]) != stats.n or len(data["seeds"]) != stats.n:
            raise CorruptFileError(f"{path}: IS inputs or seeds do not match n = {stats.n}")
        return cls(
            stats=stats,
            is_kind=str(data["is_kind"]),
            is_values=data["is_values"],
            seeds=data["seeds"],
            extractor=str(data["extractor"]),
            nfe=int(data["nfe"]),
            grid=data["grid"],
            sample_wall_seconds=float(data["sample_wall_seconds"]),
            feature_wall_seconds=float(data["feature_wall_seconds"]),
            sample_device_seconds=float(data["sample_device_seconds"]),
            feature_device_seconds=float(data["feature_device_seconds"]),
            devices=tuple(str(d) for d in data["devices"]),
            speeds=tuple(str(d) for d in data["speeds"]),
            features=_checked_features(path, data, stats),
        )


def _checked_features(path: Path, data, stats: FeatureStats) -> np.ndarray | None:
    if "features" not in data:
        return None
    features = data["features"]
    if features.shape != (stats.n, stats.dim):
        raise CorruptFileError(f"{path}: per-sample features {list(features.shape)} do not match n = {stats.n}, "
                               f"dimension {stats.dim}")
    return features


def stored_features(features: np.ndarray) -> np.ndarray:
    """Fixed-point features as the shard keeps them per sample (float32, exact)."""
    return fixed_point(features).astype(np.float32)


class ShardFailed(RuntimeError):
    """The sample shard behind a features file failed; the message is the sampler's error."""


def save_failed_shard(path: Path, error: str) -> Path:
    """A features file that passes a failed sample shard's error on to the cell."""
    return atomic_npz(Path(path), status=np.array("failed"), error=np.array(error))


def merge_shards(shards: list[ShardFeatures]) -> ShardFeatures:
    """Shards in seed order merged into one: summed statistics, concatenated IS inputs and seeds."""
    if not shards:
        raise ValueError("merge_shards needs at least one shard")
    first = shards[0]
    for shard in shards[1:]:
        if (shard.extractor, shard.is_kind, shard.nfe) != (first.extractor, first.is_kind, first.nfe):
            raise ValueError(
                f"shards disagree: extractor {shard.extractor!r} vs {first.extractor!r}, IS input {shard.is_kind!r} vs "
                f"{first.is_kind!r}, NFE {shard.nfe} vs {first.nfe}"
            )
    stats = first.stats
    for shard in shards[1:]:
        stats = stats.merge(shard.stats)
    return ShardFeatures(
        stats=stats,
        is_kind=first.is_kind,
        is_values=np.concatenate([s.is_values for s in shards]),
        seeds=np.concatenate([s.seeds for s in shards]),
        extractor=first.extractor,
        nfe=first.nfe,
        grid=first.grid,
        sample_wall_seconds=sum(s.sample_wall_seconds for s in shards),
        feature_wall_seconds=sum(s.feature_wall_seconds for s in shards),
        sample_device_seconds=sum(s.sample_device_seconds for s in shards),
        feature_device_seconds=sum(s.feature_device_seconds for s in shards),
        devices=tuple(sorted({d for s in shards for d in s.devices})),
        speeds=tuple(sorted({r for s in shards for r in s.speeds})),
        features=(None if any(s.features is None for s in shards)
                  else np.concatenate([s.features for s in shards])),
    )


def load_cell(paths: list[Path], n_samples: int, context: str) -> ShardFeatures:
    """A cell's features files merged, refused (SystemExit, a step's refusal) unless they hold exactly ``n_samples``
    distinct seeds; a failed shard raises ShardFailed, which the step writes as the cell's failed record."""
    cell = merge_shards([ShardFeatures.load(p) for p in paths])
    distinct = len(np.unique(cell.seeds))
    if cell.stats.n != n_samples or distinct != len(cell.seeds):
        raise SystemExit(
            f"cell {context}: shards hold {cell.stats.n} samples ({distinct} distinct seeds), "
            f"expected exactly {n_samples}"
        )
    return cell
