"""The sample shard file: one .npz per seed range of a cell, written by the sample step, read by the features step.

A complete shard holds the arrays of ``SampleShard``; a shard whose samples were not finite holds only
``error`` (the message) and ``seeds``, so that no metric is computed from it while the rest of the DAG
goes on. The report's image grids read ``images``, ``seeds`` and ``max_level`` of the same files.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bench.runtime.io import CorruptFileError, atomic_npz, load_npz


class FailedShard(Exception):
    """The shard records a failed sampling job; the message is the sampler's error."""


@dataclass(frozen=True, eq=False)
class SampleShard:
    """A complete shard: the samples as integer levels, their seeds, and what made them."""

    images: np.ndarray  # uint8 levels 0..max_level, [n, C, H, W]
    seeds: np.ndarray  # int64, sample i of the cell has seed base_seed + i
    max_level: int  # stored as int64
    grid: np.ndarray  # the realised grid: int64 time steps, or float64 sigmas / times
    nfe: int  # network evaluations per sample, int64
    wall_seconds: float  # float64, as the rest of the timing (bench.runtime.stepclock records)
    device_seconds: float
    device_clock: str
    device: str
    device_detail: str
    speed: str  # JSON of the speed options applied to the network (bench.runtime.speed), "null" if none
    # int64 class index of each sample of a class-conditional model (bench.core.labels), None for others
    labels: np.ndarray | None = None

    def save(self, path: Path) -> Path:
        """Write the shard atomically, each array in its dtype."""
        return atomic_npz(
            path,
            images=np.asarray(self.images, dtype=np.uint8),
            seeds=np.asarray(self.seeds, dtype=np.int64),
            max_level=np.int64(self.max_level),
            grid=np.asarray(self.grid),
            nfe=np.int64(self.nfe),
            wall_seconds=np.float64(self.wall_seconds),
            device_seconds=np.float64(self.device_seconds),
            device_clock=np.array(self.device_clock),
            device=np.array(self.device),
            device_detail=np.array(self.device_detail),
            speed=np.array(self.speed),
            **({} if self.labels is None else {"labels": np.asarray(self.labels, dtype=np.int64)}),
        )

    @classmethod
    def load(cls, path: Path) -> SampleShard:
        """Read a shard; FailedShard for a failed job's record, CorruptFileError for an incomplete file."""
        data = load_npz(path, ("seeds",))
        if "error" in data:
            raise FailedShard(str(data["error"]))
        names = [f.name for f in fields(cls) if f.name != "labels"]
        missing = [k for k in names if k not in data]
        if missing:
            raise CorruptFileError(f"sample shard {path} lacks arrays {missing}: it is not a complete shard")
        values = {k: data[k] for k in names}
        values |= {k: int(values[k]) for k in ("max_level", "nfe")}
        values |= {k: float(values[k]) for k in ("wall_seconds", "device_seconds")}
        values |= {k: str(values[k]) for k in ("device_clock", "device", "device_detail", "speed")}
        return cls(**values, labels=data.get("labels"))


def save_failed_shard(path: Path, error: str, seeds: np.ndarray) -> Path:
    """The record of a shard whose samples were not finite: the error and the seeds it was given."""
    return atomic_npz(path, error=np.array(error), seeds=seeds)
