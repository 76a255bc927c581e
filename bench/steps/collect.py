"""Gather per-cell results into the tidy ``results/metrics.csv`` and the run's ``provenance.json``."""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from bench.config import PR_METRICS, state_dtype_name
from bench.runtime.io import atomic_json, atomic_text, load_json
from bench.steps.paths import cell_key

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
    # Per-cell provenance: every device the cell's steps ran on, the seconds they held them
    # (bench.runtime.stepclock: GPU-held wall time on CUDA, process CPU time on the CPU), and for FD / IS
    # the content hash of the reference feature statistics.
    "device",
    "device_seconds",
    "reference_stats_sha256",
    # FD / IS rows: the bootstrap interval of the value from the cell's own features (bench.metrics.bootstrap).
    "ci_low",
    "ci_high",
)
SOURCE_DIR = Path(__file__).resolve().parents[2]
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "numba",
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
        for path in ([cell["fd_is"]] if "fd_is" in cell else []) + list(cell.get("fd_is_splits", {}).values()):
            r = load_json(results / path)
            protocol = {k: r[k] for k in keys if k in r}
            if r.get("status") != "failed" and protocol not in seen:
                seen.append(protocol)
    return seen


def _step_fields(record: dict) -> dict:
    """Device and time columns of a step record (a failed step may lack them)."""
    devices = record.get("devices") or ([record["device"]] if "device" in record else [])
    return {
        "device": "; ".join(devices),
        "device_seconds": round(record["device_seconds"], 3) if "device_seconds" in record else "",
        "wall_seconds": round(record["wall_seconds"], 3) if "wall_seconds" in record else "",
    }


def _interval(ci: list[float] | None) -> dict:
    return {"ci_low": ci[0], "ci_high": ci[1]} if ci else {"ci_low": "", "ci_high": ""}


def ode_nll_row(cell: dict, r: dict) -> dict:
    """The ode_nll_bpd row of a model: K and nfe are the measured NFE of its adaptive PF-ODE solve."""
    row = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid")}
    row |= {"metric": "ode_nll_bpd", "seed": cell["seed"], "replicate": 0, "reference_stats_sha256": ""}
    row |= {"n_samples": r.get("n_images", "")} | _step_fields(r)
    if r.get("status") == "failed":
        return row | {"K": "", "nfe": "", "status": "failed", "value": ""}
    return row | {"K": r["nfe"], "nfe": r["nfe"], "status": "ok", "value": r["bpd"]}


def recon_row(cell: dict, r: dict) -> dict:
    """The recon_mse row of a (model, sampler, K): DDIM's reconstruction error over the record's n images."""
    row = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid", "K")}
    row |= {"metric": "recon_mse", "seed": cell["seed"], "replicate": 0, "reference_stats_sha256": ""}
    row |= {"ci_low": "", "ci_high": "", "n_samples": r.get("n", "")} | _step_fields(r)
    if r.get("status") == "failed":
        return row | {"nfe": "", "status": "failed", "value": ""}
    return row | {"nfe": r["nfe"], "status": "ok", "value": r["mse"]}


def split_fd_row(base: dict, fd_name: str, split: str, r: dict) -> dict:
    """The `<fd>_<split>` row of a cell: its FD against the statistics of a split a table names."""
    row = base | _step_fields(r) | {"metric": f"{fd_name}_{split}"}
    if r.get("status") == "failed":
        return row | {"nfe": "", "n_samples": "", "status": "failed", "value": ""}
    return row | {"nfe": r["nfe"], "n_samples": r["n"], "status": "ok", "value": r["fd"],
                  "reference_stats_sha256": r["reference_stats_sha256"]} | _interval(r.get("fd_ci"))


def precision_recall_rows(base: dict, r: dict) -> list[dict]:
    """The precision and recall rows of a cell (bench.steps.precision_recall), no interval; their reference hash is
    that of the reference images' features."""
    row = base | _step_fields(r)
    if r.get("status") == "failed":
        return [row | {"nfe": "", "n_samples": "", "status": "failed", "value": "", "metric": m} for m in PR_METRICS]
    row |= {"nfe": r["nfe"], "n_samples": r["n"], "status": "ok",
            "reference_stats_sha256": r["reference_features_sha256"]}
    return [row | {"metric": m, "value": r[m]} for m in PR_METRICS]


def metric_rows(cell: dict, records: dict[str, dict]) -> list[dict]:
    """The metrics.csv rows of one cell, from its fd_is and nll records (or a model's ode_nll record, or a
    reconstruction's recon record), by kind."""
    if "ode_nll" in records:
        return [ode_nll_row(cell, records["ode_nll"])]
    if "recon" in records:
        return [recon_row(cell, records["recon"])]
    base = {k: cell[k] for k in ("dataset", "model", "family", "sampler", "sampler_label", "grid", "K")}
    base |= {"seed": cell["seed"], "replicate": 0, "reference_stats_sha256": "", "ci_low": "", "ci_high": ""}
    failed = {"nfe": "", "n_samples": "", "status": "failed", "value": ""}
    rows = []
    if "fd_is" in records:
        r = records["fd_is"]
        fd_name, is_name = metric_names(r.get("extractor", cell.get("fd_extractor", "")))
        # The rows of the same features against other references: a table's split, precision / recall.
        others = [split_fd_row(base, fd_name, s, records[f"fd_is_{s}"]) for s in cell.get("fd_is_splits", {})]
        if "precision_recall" in records:
            others += precision_recall_rows(base, records["precision_recall"])
        if r.get("status") == "failed":
            rows.extend(base | _step_fields(r) | failed | {"metric": m} for m in (fd_name, is_name))
            return rows + others
        common = base | _step_fields(r) | {
            "nfe": r["nfe"],
            "n_samples": r["n"],
            "status": "ok",
            "reference_stats_sha256": r["reference_stats_sha256"],
        }
        rows.append(common | {"metric": fd_name, "value": r["fd"]} | _interval(r.get("fd_ci")))
        rows.append(common | {"metric": is_name, "value": r["is_mean"]} | _interval(r.get("is_ci")))
        rows.extend(others)
    if "nll" in records:
        r = records["nll"]
        if r.get("status") == "failed":
            rows.append(base | _step_fields(r) | failed | {"metric": "nll_bpd"})
            return rows
        rows.append(
            base
            | _step_fields(r)
            | {
                "nfe": r["nfe"],
                "n_samples": r["n"],
                "status": "ok",
                "metric": "nll_bpd",
                "value": r["bpd"][cell["nll_variance"]],
            }
        )
    return rows


def oracle_rows(record: dict, labels: dict[str, dict]) -> list[dict]:
    """metrics.csv rows of the oracle table (bench.steps.oracle): one per (sampler, K), its energy distance as value."""
    return [
        {
            "dataset": record["dataset"], "model": record["model"], "family": "ddpm", "sampler": c["sampler"],
            "sampler_label": labels[c["sampler"]]["label"], "grid": labels[c["sampler"]]["grid"], "K": c["K"],
            "nfe": c["nfe"], "metric": record["metric"], "value": c["value"], "n_samples": record["n_samples"],
            "seed": record["seed"], "replicate": 0, "wall_seconds": c["wall_seconds"], "status": "ok",
            "device": "cpu", "device_seconds": "", "reference_stats_sha256": "", "ci_low": "", "ci_high": "",
        }
        for c in record["cells"]
    ]


def cell_records(cell: dict, results: Path) -> dict[str, dict]:
    """The result records of one cell by kind ('fd_is', 'nll', 'ode_nll', 'recon', 'precision_recall')."""
    kinds = ("fd_is", "nll", "ode_nll", "recon", "precision_recall")
    records = {kind: load_json(results / cell[kind]) for kind in kinds if kind in cell}
    splits = cell.get("fd_is_splits", {})
    return records | {f"fd_is_{split}": load_json(results / path) for split, path in splits.items()}


def run(spec: dict, out: Path, results: Path) -> Path:
    """The collect step: metrics.csv (one row per cell and metric) from the records under ``results``,
    provenance.json beside it."""
    records = [(cell, cell_records(cell, results)) for cell in spec["cells"]]
    rows = [row for cell, by_kind in records for row in metric_rows(cell, by_kind)]
    if "oracle" in spec:
        rows += oracle_rows(load_json(results / spec["oracle"]["record"]), spec["oracle"]["labels"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_text(buf.getvalue(), out)
    atomic_json(provenance(spec, records) | {"fd_is": fd_protocols(spec, results)}, out.with_name("provenance.json"))
    return out


def _distinct(values) -> str:
    return "; ".join(sorted({str(v) for v in values})) or "none recorded"


def _distinct_records(records) -> list[dict]:
    """The distinct JSON objects among ``records``, in the order of their canonical JSON."""
    unique = {json.dumps(r, sort_keys=True): r for r in records}
    return [unique[key] for key in sorted(unique)]


def _same_fd_record(cell: dict, kind: str) -> bool:
    """Whether a split's FD record is the cell's fd_is.json itself (the table's split is the profile's)."""
    split = kind.removeprefix("fd_is_")
    return kind != split and cell["fd_is_splits"][split] == cell.get("fd_is")


def _split_fd(records: list[tuple[dict, dict[str, dict]]]) -> list[tuple[dict, dict]]:
    return [(cell, r) for cell, by_kind in records for kind, r in by_kind.items()
            if kind.startswith("fd_is_") and r.get("status") != "failed"]


def run_summary(records: list[tuple[dict, dict[str, dict]]]) -> dict:
    """What the cells' records say about the whole run: devices, sample counts, metric backend, references."""
    fd = [(cell, r["fd_is"]) for cell, r in records if "fd_is" in r and r["fd_is"].get("status") != "failed"]
    nll = [r["nll"] for _, r in records if "nll" in r and r["nll"].get("status") != "failed"]
    # A shared cell's records are those of the cell that computed it: counted there.
    steps = [r for cell, by_kind in records if "computed_as" not in cell
             for kind, r in by_kind.items() if not _same_fd_record(cell, kind)]
    references: dict[str, set[str]] = {}
    for cell, r in fd + _split_fd(records):
        references.setdefault(f"{cell['dataset']}/{r['reference']}", set()).add(r["reference_stats_sha256"])
    return {
        "device": _distinct(d for r in steps for d in r.get("devices", [r["device"]] if "device" in r else [])),
        "device_clock": _distinct(r["device_clock"] for r in steps if "device_clock" in r),
        "sample_counts": {
            "fd_is": _distinct(r["n"] for _, r in fd),
            "nll": _distinct(r["n"] for r in nll),
        },
        "metric_backend": {
            "fd_is": _distinct(f"{r['backend']} {r['backend_version']}" for _, r in fd),
            "mode": _distinct(r.get("mode", "not recorded") for _, r in fd),
        },
        "reference_stats_sha256": {name: _distinct(hashes) for name, hashes in sorted(references.items())},
        "speed": _distinct_records(record for _, r in fd for record in r.get("speed", []) if record is not None),
        "cells_wall_seconds": round(sum(r.get("wall_seconds", 0.0) for r in steps), 3),
        "cells_device_seconds": round(sum(r.get("device_seconds", 0.0) for r in steps), 3),
    }


def _git(*args: str) -> str:
    """git in the checkout this package was imported from (the code that made the numbers)."""
    try:
        return subprocess.run(
            ["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(spec: dict, records: list[tuple[dict, dict[str, dict]]]) -> dict:
    """Run-level provenance: code version, config hash, software, devices, seeds, sampling and metric protocol."""
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
        "packages": versions,
        "seeds": spec["seeds"],
        "shared_cells": {
            cell_key(c["model"], c["sampler"], c["K"]): c["computed_as"] for c in spec["cells"] if "computed_as" in c
        },
        **run_summary(records),
        "sampling": {**spec["sampling"], "state_dtype": state_dtype_name(spec)},  # a default made explicit
        "metrics": spec["metrics"],
    }
