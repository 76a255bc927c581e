"""Published FID reference statistics as FeatureStats: fetched and verified through the references registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.checkpoints.download import fetch, file_digest
from bench.checkpoints.references import FORMAT_KEYS, StatisticsEntry
from bench.metrics.feature_stats import FeatureStats
from bench.metrics.inception import FEATURE_DIM
from bench.runtime.io import CorruptFileError, load_npz


def fetch_statistics(entry: StatisticsEntry, cache: Path, lock_file: Path) -> tuple[FeatureStats, str]:
    """Download (or find) the verified npz and load it as FeatureStats; also return the file's sha256."""
    dest = fetch(
        entry.url,
        Path(cache) / entry.name / Path(entry.url).name,
        expected_hash=entry.hash,
        hash_type=entry.hash_type,
        lock_file=lock_file,
    )
    return published_stats(dest, entry), file_digest(dest, "sha256")


def published_stats(path: Path, entry: StatisticsEntry) -> FeatureStats:
    """(mu, sigma) of a publisher's npz, with the entry's n, as sums: n mu and (n - 1) sigma + n mu mu^T."""
    mu_key, sigma_key = FORMAT_KEYS[entry.format]
    data = load_npz(Path(path), required=(mu_key, sigma_key))
    mu, sigma = np.asarray(data[mu_key], dtype=np.float64), np.asarray(data[sigma_key], dtype=np.float64)
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise CorruptFileError(
            f"{path} ({entry.name}): expected {mu_key} [{FEATURE_DIM}] and {sigma_key} [{FEATURE_DIM}, {FEATURE_DIM}], "
            f"got {list(mu.shape)} and {list(sigma.shape)}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise CorruptFileError(f"{path} ({entry.name}): {mu_key} or {sigma_key} holds non-finite values")
    return FeatureStats.from_moments(mu, sigma, entry.n_images)
