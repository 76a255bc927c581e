"""Small end-to-end configs (cut from tests/configs/tiny.yaml) and a Snakemake runner for the fault tests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
# Jobs import the bench/ of this checkout, whichever copy the venv's editable install points at.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           PYTHONUNBUFFERED="1")


def small_config(tmp_path: Path, *, samplers: tuple[str, ...] = ("ddpm_beta",), K: tuple[int, ...] = (5,),
                 T: int = 100, sampling: dict | None = None, name: str = "small") -> Path:
    """The tiny config reduced to model mlp, the given samplers and K, FD/IS only, and a table of exactly its cells."""
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["models"] = {"mlp": cfg["models"]["mlp"]}
    cfg["models"]["mlp"]["schedule"]["T"] = T
    cfg["samplers"] = {s: cfg["samplers"][s] for s in samplers}
    cfg["experiments"] = [{"model": "mlp", "samplers": list(samplers), "K": list(K)}]
    cfg["sampling"] = sampling or cfg["sampling"]
    cfg["metrics"] = {"fd_is": cfg["metrics"]["fd_is"]}
    cfg.pop("moments")
    table = {"id": name, "title": name, "metric": "fd_digits", "metric_label": "FD", "better": "lower",
             "decimals": 2, "dataset": "digits", "columns": {"field": "K", "values": list(K), "label": "K"},
             "rows": [{"label": s, "model": "mlp", "sampler": s} for s in samplers]}
    tables = tmp_path / f"{name}_tables"
    tables.mkdir(exist_ok=True)
    (tables / f"{name}.yaml").write_text(yaml.safe_dump(table))
    cfg["tables"] = [str(tables / f"{name}.yaml")]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def snakemake_command(config: Path, workdir: Path, *args: str, cores: int = 1) -> list[str]:
    return [*SNAKEMAKE, "--cores", str(cores), "--configfile", str(config), "--directory", str(workdir), *args]


def snakemake(config: Path, workdir: Path, *args: str, cores: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(config, workdir, *args, cores=cores), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def metric_values(path: Path) -> list[tuple]:
    """The rows of metrics.csv without their wall and device seconds (the only columns a rerun may change)."""
    with open(path) as f:
        return [tuple(v for k, v in row.items() if k not in ("wall_seconds", "device_seconds")) for row in csv.DictReader(f)]
