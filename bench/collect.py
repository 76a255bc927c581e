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
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch-fidelity",
    "clean-fid",
    "snakemake",
    "dpm-bench",
)


def metric_names(extractor: str) -> tuple[str, str]:
    """metrics.csv names of FD and IS: Inception FID / IS, or fd_digits / is_digits for the digits CNN."""
    return ("fid", "is") if extractor.startswith("inception_v3") else ("fd_digits", "is_digits")


def fd_protocols(spec: dict, results: Path) -> list[dict]:
    """The distinct FD / IS protocols of the run's cells: backend, mode, reference and its statistics' sha256."""
    keys = ("extractor", "backend", "backend_version", "mode", "reference", "reference_n", "reference_stats_sha256")
    seen = []
    for cell in spec["cells"]:
        if "fd_is" not in cell:
            continue
        r = load_json(results / cell["fd_is"])
        protocol = {k: r[k] for k in keys if k in r}
        if r.get("status") != "failed" and protocol not in seen:
            seen.append(protocol)
    return seen


def metric_rows(cell: dict, results: Path) -> list[dict]:
    """The metrics.csv rows of one cell, from its fd_is and nll result files."""
    base = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid", "K")}
    base |= {"seed": cell["seed"], "replicate": 0}
    rows = []
    if "fd_is" in cell:
        r = load_json(results / cell["fd_is"])
        fd_name, is_name = metric_names(r.get("extractor", cell.get("fd_extractor", "")))
        if r.get("status") == "failed":
            failed = base | {"nfe": "", "n_samples": "", "status": "failed", "value": "", "wall_seconds": ""}
            rows.extend(failed | {"metric": m} for m in (fd_name, is_name))
            return rows
        common = base | {
            "nfe": r["nfe"],
            "n_samples": r["n"],
            "status": "ok",
            "wall_seconds": round(r["sample_wall_seconds"] + r["metric_wall_seconds"], 3),
        }
        rows.append(common | {"metric": fd_name, "value": r["fd"]})
        rows.append(common | {"metric": is_name, "value": r["is_mean"]})
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
    atomic_json(provenance(spec) | {"fd_is": fd_protocols(spec, results)}, out.with_name("provenance.json"))
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
