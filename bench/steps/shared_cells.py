"""Cells that another cell of the run already computes: their samples and metrics are made once.

Analytic-DPM's optimal trajectory at K = T visits every timestep, as the even trajectory does; a sampler
that differs from another only in that grid then draws the same samples (sample i from seed + i) and has
the same bound. The tables keep both rows; the run computes one and provenance says which.
"""

from __future__ import annotations

import torch

from bench.config import Cell, cells
from bench.core.time_grids import MOMENT_GRIDS, model_free_grid

# Keys of a sampler that name or place it without changing what it computes on a given grid.
GRID_KEYS = ("grid", "grid_options")
NAME_KEYS = ("label", "latex")


def _method(sampler: dict) -> dict:
    return {k: v for k, v in sampler.items() if k not in GRID_KEYS + NAME_KEYS}


def shared_cells(cfg: dict) -> dict[Cell, Cell]:
    """Each cell on a moment grid whose realised grid is known without the model and equals the grid of a cell
    with the same model, K and otherwise identical sampler, mapped to that cell (which the run computes)."""
    run = cells(cfg)
    shared = {}
    for cell in run:
        sampler = cfg["samplers"][cell.sampler]
        T = cfg["models"][cell.model]["schedule"].get("T")
        if sampler["grid"] not in MOMENT_GRIDS or T is None:
            continue
        grid = model_free_grid(sampler["grid"], T, cell.K, **sampler.get("grid_options", {}))
        if grid is None:
            continue
        for other in run:
            twin = cfg["samplers"][other.sampler]
            if (other.model, other.K) != (cell.model, cell.K) or twin["grid"] in MOMENT_GRIDS:
                continue
            if _method(twin) != _method(sampler):
                continue
            if torch.equal(model_free_grid(twin["grid"], T, cell.K, **twin.get("grid_options", {})), grid):
                shared[cell] = other
                break
    return shared
