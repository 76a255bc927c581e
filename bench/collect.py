"""Gather per-cell results into the tidy ``results/metrics.csv`` and the run's ``provenance.json``."""

from __future__ import annotations

import csv
import io
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from bench.io import atomic_json, atomic_text, load_json

COLUMNS = (
    "dataset",
    "model",
    "family",
    "sampler",
    "sampler_label",
    "grid",
    "K",
    "nfe",
    "metric",
    "value",
    "n_samples",
    "seed",
    "replicate",
    "wall_seconds",
    "status",
)
SOURCE_DIR = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "torch-fidelity", "snakemake", "dpm-bench")


def ode_nll_row(cell: dict, results: Path) -> dict:
    """The ode_nll_bpd row of a model: K and nfe are the measured NFE of its adaptive PF-ODE solve."""
    r = load_json(results / cell["ode_nll"])
    row = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid")}
    row |= {"K": r["nfe"], "nfe": r["nfe"], "metric": "ode_nll_bpd", "seed": cell["seed"], "replicate": 0}
    row |= {"n_samples": r["n_images"], "wall_seconds": round(r["wall_seconds"], 3)}
    if r.get("status") == "failed":
        return row | {"status": "failed", "value": ""}
    return row | {"status": "ok", "value": r["bpd"]}


def metric_rows(cell: dict, results: Path) -> list[dict]:
    """The metrics.csv rows of one cell, from its fd_is and nll result files (or a model's ode_nll file)."""
    if "ode_nll" in cell:
        return [ode_nll_row(cell, results)]
    base = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid", "K")}
    base |= {"seed": cell["seed"], "replicate": 0}
    rows = []
    if "fd_is" in cell:
        r = load_json(results / cell["fd_is"])
        if r.get("status") == "failed":
            failed = base | {"nfe": "", "n_samples": "", "status": "failed", "value": "", "wall_seconds": ""}
            rows.extend(failed | {"metric": m} for m in ("fd_digits", "is_digits"))
            return rows
        common = base | {
            "nfe": r["nfe"],
            "n_samples": r["n"],
            "status": "ok",
            "wall_seconds": round(r["sample_wall_seconds"] + r["metric_wall_seconds"], 3),
        }
        rows.append(common | {"metric": "fd_digits", "value": r["fd"]})
        rows.append(common | {"metric": "is_digits", "value": r["is_mean"]})
    if "nll" in cell:
        r = load_json(results / cell["nll"])
        if r.get("status") == "failed":
            rows.append(
                base
                | {"nfe": "", "n_samples": "", "status": "failed", "value": "", "wall_seconds": "", "metric": "nll_bpd"}
            )
            return rows
        rows.append(
            base
            | {
                "nfe": r["nfe"],
                "n_samples": r["n"],
                "status": "ok",
                "metric": "nll_bpd",
                "value": r["bpd"][cell["nll_variance"]],
                "wall_seconds": round(r["wall_seconds"], 3),
            }
        )
    return rows


def collect_metrics(spec: dict, results: Path, out: Path) -> Path:
    """Write metrics.csv (one row per cell and metric) and provenance.json beside it."""
    rows = [row for cell in spec["cells"] for row in metric_rows(cell, results)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_text(buf.getvalue(), out)
    atomic_json(provenance(spec), out.with_name("provenance.json"))
    return out


def _git(*args: str) -> str:
    """git in the checkout this package was imported from (the code that made the numbers)."""
    try:
        return subprocess.run(
            ["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(spec: dict) -> dict:
    """Run-level provenance: code version, config hash, software, device, sampling protocol."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": status != "" if status != "unknown" else "unknown",
        "config_hash": spec["config_hash"],
        "profile": spec["profile"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        "sampling": spec["sampling"],
        "metrics": spec["metrics"],
    }
