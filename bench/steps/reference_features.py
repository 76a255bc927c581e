"""The reference-features step: per-image features of a seeded subset of a dataset split, for precision / recall.

guided-diffusion scores precision and recall against a reference batch of 10,000 images, beside FID statistics of
the whole dataset (evaluations/README.md, "Reference dataset batches ... as well as 10,000 images for computing
Precision and Recall"); which 10,000 it does not say. Here: ``n`` images of the split drawn uniformly without
replacement by ``seed`` (every image when the split has no more), in index order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.runtime.io import CorruptFileError, atomic_npz, load_npz


@dataclass(frozen=True, eq=False)
class ReferenceFeatures:
    """Fixed-point features of the reference images, their indices in the split and where they come from."""

    features: np.ndarray
    indices: np.ndarray
    split: str
    split_size: int
    seed: int
    extractor: str

    def content_hash(self) -> str:
        """sha256 of the features (float32 little-endian) and the indices (int64 little-endian)."""
        digest = hashlib.sha256(np.ascontiguousarray(self.features, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(self.indices, dtype="<i8").tobytes())
        return digest.hexdigest()

    def save(self, path: Path) -> Path:
        """Write one .npz atomically, with the content hash that load checks."""
        return atomic_npz(
            Path(path), features=np.asarray(self.features, dtype=np.float32),
            indices=np.asarray(self.indices, dtype=np.int64), split=np.array(self.split),
            split_size=np.array(self.split_size, dtype=np.int64), seed=np.array(self.seed, dtype=np.int64),
            extractor=np.array(self.extractor), sha256=np.array(self.content_hash()),
        )

    @classmethod
    def load(cls, path: Path) -> ReferenceFeatures:
        """Read a file written by save; a content hash mismatch raises CorruptFileError."""
        keys = ("features", "indices", "split", "split_size", "seed", "extractor", "sha256")
        data = load_npz(Path(path), required=keys)
        ref = cls(features=data["features"], indices=data["indices"], split=str(data["split"]),
                  split_size=int(data["split_size"]), seed=int(data["seed"]), extractor=str(data["extractor"]))
        if ref.content_hash() != str(data["sha256"]) or len(ref.features) != len(ref.indices):
            raise CorruptFileError(f"{path}: the reference features do not match their recorded sha256")
        return ref


def reference_indices(split_size: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct image indices of a split of ``split_size`` images drawn by ``seed``, sorted (all if fewer)."""
    if n >= split_size:
        return np.arange(split_size, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(split_size, size=n, replace=False)).astype(np.int64)


def run(spec: dict, out: Path, extractor: Path, threads: int) -> None:
    """Features under ``spec["extractor"]`` (weights ``extractor``) of ``spec["n"]`` images of the dataset split
    ``spec["split"]``, drawn by ``spec["seed"]``."""
    from bench.data import load_dataset
    from bench.metrics.extractors import extract_outputs, runs_on_host, signature
    from bench.metrics.shard_features import stored_features

    if not runs_on_host(spec["extractor"]):
        import torch

        torch.set_num_threads(threads)
    split = load_dataset(spec["dataset"], spec["split"])
    indices = reference_indices(len(split.images), spec["n"], spec["seed"])
    features, _, _ = extract_outputs(spec["extractor"], extractor, split.images[indices], split.max_level)
    ReferenceFeatures(features=stored_features(features), indices=indices, split=spec["split"],
                      split_size=len(split.images), seed=spec["seed"], extractor=signature(spec["extractor"])).save(out)
