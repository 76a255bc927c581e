"""CIFAR-10 through torchvision: the python pickle batches under ``root``, md5-checked by torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.digits import ImageSplit
from bench.data.layout import MAX_LEVEL, DatasetLayoutError, check_split

SPLITS = ("train", "test")
LAYOUT = (
    "<root>/cifar-10-batches-py/ with data_batch_1 .. data_batch_5, test_batch and batches.meta "
    "(the python pickle release, cifar-10-python.tar.gz, extracted); set download: true to let "
    "torchvision fetch and md5-check it"
)


def _torchvision_cifar10(root: Path, split: str, download: bool):
    from bench.runtime.torchvision_compat import import_torchvision

    datasets = import_torchvision().datasets
    try:
        return datasets.CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        # torchvision's own check: a missing file or an md5 mismatch ("not found or corrupted").
        raise DatasetLayoutError(
            f"dataset cifar10: {root / 'cifar-10-batches-py'} is missing or fails torchvision's md5 check "
            f"({err}); expected layout: {LAYOUT}"
        ) from None


def check_cifar10(spec: dict) -> dict[str, int]:
    """Verify (or with ``download`` fetch) both splits; return their sizes."""
    return {s: len(_torchvision_cifar10(Path(spec["root"]), s, spec.get("download", False))) for s in SPLITS}


def load_cifar10_split(spec: dict, split: str) -> ImageSplit:
    """The train (50k) or test (10k) split as uint8 N x 3 x 32 x 32 with labels."""
    check_split(split, SPLITS, "cifar10")
    data = _torchvision_cifar10(Path(spec["root"]), split, spec.get("download", False))
    images = np.ascontiguousarray(data.data.transpose(0, 3, 1, 2))
    return ImageSplit(images=images, labels=np.asarray(data.targets, dtype=np.int64), max_level=MAX_LEVEL)
