"""FFHQ 64x64 and AFHQv2 64x64 as EDM trains and evaluates on them: dataset_tool.py outputs, from a user path.

NVlabs/edm README.md L162-175 makes them with `dataset_tool.py --resolution=64x64` into
datasets/ffhq-64x64.zip and datasets/afhqv2-64x64.zip; the models and fid.py's reference
statistics use every image, so the one split is `train`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.digits import ImageSplit
from bench.data.edm_image_folder import EdmImageFolder, EdmLayout, locate
from bench.data.layout import MAX_LEVEL, check_split

SPLITS = ("train",)
SHAPE = (3, 64, 64)


def _layout(kind: str, stem: str) -> EdmLayout:
    return EdmLayout(
        kind=kind,
        stem=stem,
        shape=SHAPE,
        description=(
            f"<root>/{stem}.zip or the folder <root>/{stem}/ as EDM's dataset_tool.py --resolution=64x64 writes "
            "them: 00000/img00000000.png ... (64x64 RGB), optional dataset.json "
            '{"labels": [[file, label], ...] or null}'
        ),
    )


FFHQ64 = _layout("ffhq64", "ffhq-64x64")
AFHQV2_64 = _layout("afhqv2_64", "afhqv2-64x64")


def check_edm_dataset(spec: dict, layout: EdmLayout) -> dict[str, int]:
    """Every image's size and channels and dataset.json's agreement with the images; the split size."""
    with EdmImageFolder(locate(Path(spec["root"]), layout), layout) as folder:
        for name in folder.image_names:
            folder.check_image(name)
        folder.labels()
        return {"train": len(folder.image_names)}


def load_edm_split(spec: dict, split: str, layout: EdmLayout) -> ImageSplit:
    """The first max_images images in EDM's order as uint8 N x 3 x 64 x 64, with dataset.json's labels
    (zeros when it has none)."""
    check_split(split, SPLITS, layout.kind)
    with EdmImageFolder(locate(Path(spec["root"]), layout), layout) as folder:
        labels = folder.labels()
        count = len(folder.image_names[: spec.get("max_images")])
        images = np.stack([folder.read_image(name) for name in folder.image_names[:count]])
    if labels is None:
        labels = np.zeros(count, dtype=np.int64)
    return ImageSplit(images=images, labels=labels[:count], max_level=MAX_LEVEL)


def check_ffhq64(spec: dict) -> dict[str, int]:
    """FFHQ 64x64 (70,000 images in EDM's zip): layout check and split size."""
    return check_edm_dataset(spec, FFHQ64)


def load_ffhq64_split(spec: dict, split: str) -> ImageSplit:
    """FFHQ 64x64 images (unlabelled in EDM's zip)."""
    return load_edm_split(spec, split, FFHQ64)


def check_afhqv2_64(spec: dict) -> dict[str, int]:
    """AFHQv2 64x64: layout check and split size."""
    return check_edm_dataset(spec, AFHQV2_64)


def load_afhqv2_64_split(spec: dict, split: str) -> ImageSplit:
    """AFHQv2 64x64 images; dataset_tool labels them by top-level folder when the source has several."""
    return load_edm_split(spec, split, AFHQV2_64)
