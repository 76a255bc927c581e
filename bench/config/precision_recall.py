"""Improved precision and recall of a config (metrics.precision_recall): its settings and the cells tables ask for."""

from __future__ import annotations

from pathlib import Path

from bench.config.cells import Cell
from bench.config.schema import ConfigError, read_yaml
from bench.metrics.precision_recall import DEFAULT_BATCH_SIZE, DEFAULT_K

# metrics.csv names of the two values one precision-recall job computes for a cell.
PR_METRICS = ("precision", "recall")


def precision_recall_settings(cfg: dict) -> dict:
    """metrics.precision_recall with guided-diffusion's defaults filled in (k = 3, 10000 x 10000 blocks)."""
    pr = cfg["metrics"]["precision_recall"]
    return {"k": DEFAULT_K, "row_batch_size": DEFAULT_BATCH_SIZE, "col_batch_size": DEFAULT_BATCH_SIZE} | pr


def precision_recall_cells(cfg: dict, root: Path) -> list[Cell]:
    """Every cell a table of metric precision or recall shows, in table order, once."""
    wanted: dict[Cell, None] = {}
    for rel in cfg["tables"]:
        spec = read_yaml(Path(root) / rel)
        if spec.get("metric") not in PR_METRICS or spec.get("rows") == "all":
            continue
        field = spec["columns"]["field"]
        for row in spec["rows"]:
            if "unavailable" in row:
                continue
            at = {str(k): v for k, v in row.get("at", {}).items()}
            for value in spec["columns"]["values"]:
                if str(value) in {str(k) for k in row.get("unavailable_at", {})}:
                    continue
                selected = {**row, field: value, **at.get(str(value), {})}
                wanted[Cell(selected["model"], selected["sampler"], int(selected["K"]))] = None
    return list(wanted)


def check_precision_recall_table(cfg: dict, spec: dict, rel: str) -> None:
    """A precision / recall table names its cells (each has a job of its own) and needs metrics.precision_recall,
    and metrics.fd_is, whose features it reads."""
    if spec.get("rows") == "all":
        raise ConfigError(f"table spec {rel}: metric {spec['metric']!r} needs rows naming their cells, not 'all'")
    for key in ("fd_is", "precision_recall"):
        if key not in cfg["metrics"]:
            raise ConfigError(f"table spec {rel}: a precision / recall table needs the config key 'metrics.{key}'")
