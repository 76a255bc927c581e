"""PNG grids of generated samples, one per results cell, from that cell's first shard."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

from bench.report.results import ResultsError
from bench.report.tables import SampleKey
from bench.steps.paths import CELL_DIR_GLOB, cell_dir, cell_key, parse_cell_key

_SHARD = re.compile(r"shard(\d{4})\.npz")


@dataclass(frozen=True)
class SampleGrid:
    """A written grid: its path relative to the report folder and what it shows."""

    key: SampleKey
    relpath: str
    shard: str
    n_images: int
    first_seed: int
    last_seed: int


def first_shards(samples_dir: Path) -> dict[SampleKey, Path]:
    """Map each cell folder (bench.steps.paths.CELL_DIR) to its lowest-numbered shard."""
    found: dict[SampleKey, Path] = {}
    if not samples_dir.is_dir():
        return found
    for k_dir in sorted(samples_dir.glob(CELL_DIR_GLOB)):
        dataset, *key = k_dir.relative_to(samples_dir).parts
        cell = parse_cell_key("/".join(key))
        # Names outside the pattern (e.g. half-written temporary files) are not shards.
        shards = sorted(p for p in k_dir.glob("shard*.npz") if _SHARD.fullmatch(p.name))
        if cell and shards:
            found[(dataset, *cell)] = shards[0]
    return found


def grid_image(images: np.ndarray, max_level: int, *, columns: int = 8, min_cell_px: int = 32,
               pad: int = 2, pad_level: int = 220) -> np.ndarray:
    """Tile uint8 [n,C,H,W] images of levels 0..max_level into one RGB uint8 array.

    Levels map linearly to 0..255, and small images are enlarged by pixel repetition
    (nearest neighbour) so 8x8 digits stay visible without blurring.
    """
    n, channels, height, width = images.shape
    scale = max(1, math.ceil(min_cell_px / max(height, width)))
    rgb = np.rint(images.astype(np.float64) * (255.0 / max_level)).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=1) if channels == 1 else rgb
    rgb = rgb.transpose(0, 2, 3, 1).repeat(scale, axis=1).repeat(scale, axis=2)
    cell_h, cell_w = height * scale, width * scale
    rows = math.ceil(n / columns)
    cols = min(n, columns)
    canvas = np.full(
        (rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), pad_level, dtype=np.uint8
    )
    for index in range(n):
        top = pad + (index // columns) * (cell_h + pad)
        left = pad + (index % columns) * (cell_w + pad)
        canvas[top:top + cell_h, left:left + cell_w] = rgb[index]
    return canvas


def _load_shard(shard: Path, limit: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(images, seeds, max_level) of a shard; None for a failed cell's record (an ``error``, no images)."""
    with np.load(shard) as data:
        if "error" in data.files:
            return None
        missing = {"images", "seeds", "max_level"} - set(data.files)
        if missing:
            raise ResultsError(f"{shard}: lacks {sorted(missing)}; a shard holds images, "
                               "seeds and max_level")
        images, seeds, max_level = data["images"][:limit], data["seeds"][:limit], data["max_level"]
    if seeds.shape != (len(images),):
        raise ResultsError(f"{shard}: seeds have shape {seeds.shape}, expected ({len(images)},)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ResultsError(
            f"{shard}: images have dtype {images.dtype} and shape {images.shape}; "
            "expected uint8 [n, C, H, W] with C 1 or 3"
        )
    if len(images) == 0:
        raise ResultsError(f"{shard}: holds no images")
    level = int(max_level)
    if not 1 <= level <= 255 or int(images.max()) > level:
        raise ResultsError(
            f"{shard}: max_level {level} must lie in 1..255 and bound the images "
            f"(largest level found {int(images.max())})"
        )
    return images, seeds, level


def write_sample_grids(samples_dir: Path, report_dir: Path, *, n_images: int = 64,
                       columns: int = 8) -> dict[SampleKey, SampleGrid]:
    """Write report_dir/samples/{cell folder}.png (bench.steps.paths.CELL_DIR) for every cell with a shard."""
    grids: dict[SampleKey, SampleGrid] = {}
    for key, shard in first_shards(Path(samples_dir)).items():
        loaded = _load_shard(shard, n_images)
        if loaded is None:
            continue  # the table marks the failed cell; there are no samples to show
        images, seeds, max_level = loaded
        dataset, model, sampler, k = key
        relpath = f"samples/{cell_dir(dataset, model, sampler, k)}.png"
        target = Path(report_dir) / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        mpimg.imsave(target, grid_image(images, max_level, columns=columns))
        grids[key] = SampleGrid(
            key=key,
            relpath=relpath,
            shard=shard.name,
            n_images=len(images),
            first_seed=int(seeds[0]),
            last_seed=int(seeds[-1]),
        )
    return grids


def shared_sample_grids(grids: dict[SampleKey, SampleGrid], shared: dict[str, str]) -> dict[SampleKey, SampleGrid]:
    """The grid of each shared cell ('model/sampler/K', provenance's shared_cells): its computing cell's grid."""
    by_cell = {cell_key(model, sampler, k): grid for (_, model, sampler, k), grid in grids.items()}
    out = {}
    for cell, source in shared.items():
        if source in by_cell and (key := parse_cell_key(cell)):
            out[(by_cell[source].key[0], *key)] = by_cell[source]
    return out
