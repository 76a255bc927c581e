"""Errors and shared helpers for user-supplied datasets (paper profile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_LEVEL = 255


class DatasetLayoutError(FileNotFoundError):
    """A dataset path that is missing or not laid out as its kind expects; the message names both."""


def require(path: Path, kind: str, layout: str, *, is_dir: bool = False) -> Path:
    """Return ``path`` if it exists (as a folder when ``is_dir``), else say what was expected there."""
    path = Path(path)
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        what = "folder" if is_dir else "file"
        raise DatasetLayoutError(f"dataset {kind}: expected a {what} at {path}; expected layout: {layout}")
    return path


def to_chw_uint8(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as a uint8 C x H x W array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def check_split(split: str, allowed: tuple[str, ...], kind: str) -> None:
    if split not in allowed:
        raise ValueError(f"dataset {kind}: split {split!r} is not one of {list(allowed)}")
