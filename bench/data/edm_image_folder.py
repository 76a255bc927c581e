"""Datasets as EDM's dataset_tool.py writes them: a zip or a folder of PNGs, with an optional dataset.json.

dataset_tool.py L398-399 names image idx `{idx:08d}[:5]/img{idx:08d}.png` and L431-432 writes
`dataset.json` = {"labels": [[name, label], ...]} or {"labels": null}. Reading follows
training/dataset.py ImageFolderDataset (NVlabs/edm @008a4e53).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from bench.data.layout import DatasetLayoutError

LABELS_FILE = "dataset.json"


@dataclass(frozen=True)
class EdmLayout:
    """What a dataset kind expects of a dataset_tool output: where it lies and its image shape."""

    kind: str
    stem: str
    shape: tuple[int, int, int]
    description: str


class EdmImageFolder:
    """One dataset_tool output (zip or folder): its image names in EDM's order, images and labels."""

    def __init__(self, path: Path, layout: EdmLayout) -> None:
        self.path = Path(path)
        self.layout = layout
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            # training/dataset.py L179: every file below the folder, relative to it.
            names = {
                Path(os.path.relpath(Path(top) / name, self.path)).as_posix()
                for top, _, files in os.walk(self.path)
                for name in files
            }
        elif self.path.suffix.lower() == ".zip" and self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as err:
                raise self._error(f"{self.path} is not a readable zip ({err})") from None
            # training/dataset.py L182: the zip's member names.
            names = set(self._zip.namelist())
        else:
            raise self._error(f"{self.path} is neither a folder nor a .zip file")
        self.all_names = names
        # training/dataset.py L186-187: names with an extension PIL can open, sorted as strings.
        Image.init()
        self.image_names = sorted(n for n in names if os.path.splitext(n)[1].lower() in Image.EXTENSION)
        if not self.image_names:
            # training/dataset.py L188-189.
            raise self._error(f"{self.path} holds no image files")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> EdmImageFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, what: str) -> DatasetLayoutError:
        return DatasetLayoutError(f"dataset {self.layout.kind}: {what}; expected layout: {self.layout.description}")

    def where(self, name: str) -> str:
        """A member's location as a user finds it: `archive.zip:member` or the file path."""
        return f"{self.path}:{name}" if self._zip is not None else str(self.path / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self._zip is not None:
            with self._zip.open(name, "r") as handle:
                yield handle
        else:
            with open(self.path / name, "rb") as handle:
                yield handle

    def _decode(self, name: str, *, pixels: bool) -> np.ndarray | None:
        """The image's pixels (when asked) once its header's channels, height and width match the kind's."""
        try:
            with self.open(name) as handle, Image.open(handle) as image:
                found = (len(image.getbands()), image.height, image.width)
                array = np.array(image) if pixels and found == self.layout.shape else None
        except (OSError, SyntaxError) as err:
            raise self._error(f"{self.where(name)} is not a readable image ({err})") from None
        if found != self.layout.shape:
            channels, height, width = self.layout.shape
            raise self._error(
                f"{self.where(name)} is {found[2]}x{found[1]}x{found[0]} (width x height x channels), "
                f"expected {width}x{height}x{channels}"
            )
        return array

    def check_image(self, name: str) -> None:
        """Width, height and channels from the image header, against the kind's shape."""
        self._decode(name, pixels=False)

    def read_image(self, name: str) -> np.ndarray:
        """training/dataset.py L224-234: the decoded array, grey images given a channel axis, as C x H x W."""
        array = self._decode(name, pixels=True)
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
        if array.dtype != np.uint8:
            # training/dataset.py L99 asserts uint8 images.
            raise self._error(f"{self.where(name)} decodes to {array.dtype}, expected uint8")
        return array.transpose(2, 0, 1)

    def labels(self) -> np.ndarray | None:
        """training/dataset.py L236-248: labels in image order (int64 classes or float32 vectors), or None
        when dataset.json is absent or holds null; every image needs a label and every label an image."""
        if LABELS_FILE not in self.all_names:
            return None
        try:
            with self.open(LABELS_FILE) as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self._error(f"{self.where(LABELS_FILE)} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or "labels" not in data:
            raise self._error(f"{self.where(LABELS_FILE)} has no key 'labels' (null or a list of [file, label])")
        entries = data["labels"]
        if entries is None:
            return None
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 for e in entries):
            raise self._error(f"{self.where(LABELS_FILE)}: 'labels' must be null or a list of [file, label] pairs")
        table = {str(name).replace("\\", "/"): label for name, label in entries}
        absent = sorted(set(table) - set(self.image_names))
        if absent:
            raise self._error(
                f"{self.where(LABELS_FILE)} lists {len(absent)} file(s) not in {self.path}, "
                f"first {absent[0]!r}"
            )
        unlabelled = [n for n in self.image_names if n not in table]
        if unlabelled:
            raise self._error(
                f"{self.where(LABELS_FILE)} has no label for {len(unlabelled)} image(s), "
                f"first {unlabelled[0]!r}"
            )
        labels = np.array([table[n] for n in self.image_names])
        if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.number):
            raise self._error(
                f"{self.where(LABELS_FILE)}: labels must be all integers (classes) or all equal-length "
                f"number lists, got array {labels.dtype} {list(labels.shape)}"
            )
        if labels.ndim == 1 and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise self._error(f"{self.where(LABELS_FILE)}: class labels must be integers >= 0")
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])


def locate(root: Path, layout: EdmLayout) -> Path:
    """`<root>/<stem>.zip` if it exists, else the folder `<root>/<stem>` (dataset_tool's --dest forms)."""
    archive, folder = Path(root) / f"{layout.stem}.zip", Path(root) / layout.stem
    if archive.is_file():
        return archive
    if folder.is_dir():
        return folder
    raise DatasetLayoutError(
        f"dataset {layout.kind}: expected {archive} or a folder {folder}; expected layout: {layout.description}"
    )
