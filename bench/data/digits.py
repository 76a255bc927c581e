"""scikit-learn's bundled 8x8 digits: a real image dataset that needs no download."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LEVEL = 16
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSplit:
    """Integer-level images (uint8, N x C x H x W, 0..max_level) with their labels."""

    images: np.ndarray
    labels: np.ndarray
    max_level: int


def load_digits_split(split: str, *, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Return the train or test part of a fixed, seeded, stratified split of the 1797 digits."""
    if split not in SPLITS:
        raise ValueError(f"digits split {split!r} is not one of {list(SPLITS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction!r} must lie in (0, 1)")
    from sklearn.datasets import load_digits  # here: scikit-learn takes a second to import, and only loading needs it

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(test_fraction * len(idx)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    keep = is_test if split == "test" else ~is_test
    return ImageSplit(images=images[keep], labels=labels[keep], max_level=MAX_LEVEL)


def levels_to_unit(images: np.ndarray, max_level: int) -> np.ndarray:
    """Map integer levels 0..max_level to float32 values in [-1, 1] (bin centres)."""
    return (images.astype(np.float32) / max_level) * 2.0 - 1.0


def unit_to_levels(x: np.ndarray, max_level: int) -> np.ndarray:
    """Round values in [-1, 1] to the nearest of max_level + 1 levels (uint8), clipping outside."""
    levels = np.rint((np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * max_level)
    return np.clip(levels, 0, max_level).astype(np.uint8)
