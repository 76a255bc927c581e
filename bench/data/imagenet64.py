"""Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017) in its npz batch release, from a user-supplied path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.digits import ImageSplit
from bench.data.layout import MAX_LEVEL, DatasetLayoutError, check_split, require

SPLITS = ("train", "test")
TRAIN_BATCHES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILE = "val_data.npz"
SIDE = 64
LAYOUT = (
    f"<root>/train_data_batch_1.npz .. train_data_batch_10.npz and <root>/{VAL_FILE} (Imagenet64_train_npz "
    f"and Imagenet64_val_npz extracted into one folder); each npz holds 'data' (N x {3 * SIDE * SIDE} uint8, "
    "the R, G and B planes in turn) and 'labels' (1..1000); the test split is the validation set"
)


def _files(root: Path, split: str) -> list[Path]:
    names = TRAIN_BATCHES if split == "train" else (VAL_FILE,)
    return [require(root / name, "imagenet64", LAYOUT) for name in names]


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as batch:
        missing = [k for k in ("data", "labels") if k not in batch.files]
        if missing:
            raise DatasetLayoutError(f"dataset imagenet64: {path} lacks arrays {missing}; expected layout: {LAYOUT}")
        data, labels = batch["data"], batch["labels"]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DatasetLayoutError(
            f"dataset imagenet64: {path} 'data' is {data.dtype} {list(data.shape)}, expected uint8 "
            f"[N, {3 * SIDE * SIDE}]; expected layout: {LAYOUT}"
        )
    return data, np.asarray(labels, dtype=np.int64) - 1


def check_imagenet64(spec: dict) -> dict[str, int]:
    """Verify every batch file's arrays; return split sizes."""
    root = Path(spec["root"])
    return {s: sum(len(_read(p)[0]) for p in _files(root, s)) for s in SPLITS}


def load_imagenet64_split(spec: dict, split: str) -> ImageSplit:
    """Train (1,281,167 images) or test (the 50k validation images) as uint8 N x 3 x 64 x 64, labels 0..999."""
    check_split(split, SPLITS, "imagenet64")
    parts = [_read(p) for p in _files(Path(spec["root"]), split)]
    data = np.concatenate([d for d, _ in parts])[: spec.get("max_images")]
    labels = np.concatenate([lab for _, lab in parts])[: spec.get("max_images")]
    return ImageSplit(images=data.reshape(-1, 3, SIDE, SIDE), labels=labels, max_level=MAX_LEVEL)
