"""CelebA 64x64 as DDIM and Analytic-DPM make it: a fixed 128x128 crop of the aligned images, resized to 64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.digits import ImageSplit
from bench.data.layout import MAX_LEVEL, check_split, require, to_chw_uint8

SPLITS = ("train", "valid", "test")
PARTITION = {"train": 0, "valid": 1, "test": 2}
# ermongroup/ddim datasets/__init__.py: cx = 89, cy = 121, Crop(x1=cy-64, x2=cy+64, y1=cx-64, y2=cx+64),
# i.e. F.crop(img, top=57, left=25, height=128, width=128), then transforms.Resize(64).
CROP_TOP, CROP_LEFT, CROP_SIZE = 121 - 64, 89 - 64, 128
IMAGE_SIZE = 64
LAYOUT = (
    "<root>/img_align_celeba/*.jpg (178x218 aligned images) and <root>/list_eval_partition.txt "
    "('<file> <0|1|2>' per line: train, valid, test), as in torchvision's celeba folder"
)


def _partition(root: Path) -> list[tuple[str, int]]:
    listing = require(root / "list_eval_partition.txt", "celeba64", LAYOUT)
    entries = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"dataset celeba64: {listing} line {n}: {line!r} is not '<file> <0|1|2>'")
        entries.append((fields[0], int(fields[1])))
    return entries


def _files(spec: dict, split: str) -> list[Path]:
    root = Path(spec["root"])
    folder = require(root / "img_align_celeba", "celeba64", LAYOUT, is_dir=True)
    names = [name for name, part in _partition(root) if part == PARTITION[split]]
    return [folder / name for name in names[: spec.get("max_images")]]


def crop_resize(image: Image.Image) -> Image.Image:
    """DDIM's CelebA crop box and torchvision's Resize(64) (bilinear, antialiased)."""
    from bench.runtime.torchvision_compat import import_torchvision

    functional = import_torchvision().transforms.functional
    cropped = functional.crop(image.convert("RGB"), CROP_TOP, CROP_LEFT, CROP_SIZE, CROP_SIZE)
    return functional.resize(cropped, IMAGE_SIZE)


def check_celeba64(spec: dict) -> dict[str, int]:
    """Verify the layout and that every listed image of every split exists; return split sizes."""
    sizes = {}
    for split in SPLITS:
        files = _files(spec, split)
        for path in files:
            require(path, "celeba64", LAYOUT)
        sizes[split] = len(files)
    return sizes


def load_celeba64_split(spec: dict, split: str) -> ImageSplit:
    """A split as uint8 N x 3 x 64 x 64 (labels are zeros: the benchmark is unconditional)."""
    check_split(split, SPLITS, "celeba64")
    files = _files(spec, split)
    images = np.stack([to_chw_uint8(crop_resize(Image.open(require(p, "celeba64", LAYOUT)))) for p in files])
    return ImageSplit(images=images, labels=np.zeros(len(images), dtype=np.int64), max_level=MAX_LEVEL)
