"""LSUN scenes (bedroom, church_outdoor, cat) as folders of exported images, from a user-supplied path.

We read the images the official LSUN tool exports from its LMDB databases (``python data.py export
<category>_train_lmdb --out_dir <root>/<category>_train``), not the LMDB itself, so that no LMDB
binding is needed. Images are resized (shorter side 256) and centre-cropped to 256 x 256, as DDIM's
LSUN transform does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.digits import ImageSplit
from bench.data.layout import IMAGE_SUFFIXES, MAX_LEVEL, DatasetLayoutError, check_split, require, to_chw_uint8

SPLITS = ("train", "test")
FOLDER_SUFFIX = {"train": "train", "test": "val"}  # LSUN's scene categories have train and val sets only
SIDE = 256


def layout(category: str) -> str:
    return (
        f"<root>/{category}_train/ and <root>/{category}_val/, each a folder (any depth) of "
        f"{'/'.join(IMAGE_SUFFIXES)} images exported from LSUN's {category}_train_lmdb / {category}_val_lmdb"
    )


def _files(spec: dict, split: str) -> list[Path]:
    category = spec["category"]
    folder = require(Path(spec["root"]) / f"{category}_{FOLDER_SUFFIX[split]}", "lsun", layout(category), is_dir=True)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetLayoutError(f"dataset lsun: no images under {folder}; expected layout: {layout(category)}")
    return files[: spec.get("max_images")]


def resize_center_crop(image: Image.Image) -> Image.Image:
    """transforms.Resize(256) then CenterCrop(256), as ermongroup/ddim's LSUN pipeline."""
    from bench.runtime.torchvision_compat import import_torchvision

    functional = import_torchvision().transforms.functional
    return functional.center_crop(functional.resize(image.convert("RGB"), SIDE), SIDE)


def check_lsun(spec: dict) -> dict[str, int]:
    """Verify both split folders hold images; return the number used per split."""
    return {s: len(_files(spec, s)) for s in SPLITS}


def load_lsun_split(spec: dict, split: str) -> ImageSplit:
    """A split as uint8 N x 3 x 256 x 256 (first ``max_images`` files in path order)."""
    check_split(split, SPLITS, "lsun")
    images = np.stack([to_chw_uint8(resize_center_crop(Image.open(p))) for p in _files(spec, split)])
    return ImageSplit(images=images, labels=np.zeros(len(images), dtype=np.int64), max_level=MAX_LEVEL)
