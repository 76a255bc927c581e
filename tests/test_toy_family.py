"""Adding a family is one module: a toy family written into a copy of the package is validated, planned,
trained, sampled and reported without any other file changing."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from dag import ROOT

TOY_FAMILY = '''
"""A toy eps family: DDPM's network, loss and denoiser under another name, offering the discrete and sigma views."""

from bench.families.ddpm import DISCRETE_SCHEDULES, eps_denoiser, simple_objective
from bench.families.spec import FamilySpec

FAMILY = FamilySpec(
    name="toy",
    schedules=DISCRETE_SCHEDULES,
    losses={"simple": simple_objective},
    denoiser=eps_denoiser,
    spaces=("discrete", "sigma"),
)
'''

TABLE = {
    "id": "toy_fd_digits",
    "title": "Toy family: FD (digits classifier features)",
    "metric": "fd_digits",
    "metric_label": "FD (digits)",
    "better": "lower",
    "decimals": 2,
    "dataset": "digits",
    "columns": {"field": "K", "values": [2], "label": "K"},
    "rows": [{"label": "Toy, DDIM", "latex": "Toy, DDIM", "model": "toy", "sampler": "ddim_eta0"}],
}


def toy_config(table: Path) -> dict:
    return {
        "profile": "embedded",
        "seed": 0,
        "datasets": {"digits": {"kind": "digits", "test_fraction": 0.2, "split_seed": 0}},
        "extractors": {"digits_cnn": {"kind": "digits_cnn", "dataset": "digits", "epochs": 1, "seed": 0}},
        "models": {
            "toy": {
                "dataset": "digits",
                "family": "toy",
                "network": {"type": "mlp", "width": 16, "depth": 1, "emb_dim": 8},
                "schedule": {"name": "linear", "T": 50},
                "train": {"steps": 5, "batch_size": 16, "lr": 1.0e-3, "ema": 0.9, "seed": 0},
            }
        },
        "samplers": {
            "ddim_eta0": {"fn": "ddim", "label": "DDIM", "grid": "uniform", "options": {"eta": 0.0}},
            "pc": {"fn": "pc", "label": "PC", "grid": "ve", "options": {"n_steps_each": 1}},
        },
        "experiments": [{"model": "toy", "samplers": ["ddim_eta0"], "K": [2]}],
        "sampling": {"n_samples": 10, "shard_size": 10, "batch_size": 10, "seed": 0},
        "metrics": {"fd_is": {"extractor": "digits_cnn", "reference_split": "train"}},
        "tables": [str(table)],
    }


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the checkout's package and workflow with bench/families/toy.py added, and the env that imports it.

    Commands run from ``base``, outside both checkouts, so that no other copy of ``bench`` shadows this one.
    """
    base = tmp_path_factory.mktemp("toy")
    checkout = base / "checkout"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "bench", checkout / "bench", ignore=skip)
    shutil.copytree(ROOT / "workflows", checkout / "workflows", ignore=skip)
    shutil.copy(ROOT / "Snakefile", checkout / "Snakefile")
    (checkout / "bench" / "families" / "toy.py").write_text(textwrap.dedent(TOY_FAMILY))
    env = dict(os.environ, PYTHONPATH=str(checkout), PYTHONUNBUFFERED="1")
    return base, env


def write_config(base: Path, cfg_changes: dict | None = None) -> Path:
    table = base / "toy_fd_digits.yaml"
    table.write_text(yaml.safe_dump(TABLE, allow_unicode=True))
    cfg = toy_config(table)
    for key, value in (cfg_changes or {}).items():
        cfg[key] = value
    path = base / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def bench(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=env["PYTHONPATH"], env=env, capture_output=True, text=True,
        timeout=300,
    )


def test_the_toy_family_is_validated_and_planned(toy_package):
    base, env = toy_package
    config = write_config(base)
    ok = bench(env, "validate", "--config", str(config))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "valid; 1 cells" in ok.stdout
    plan = bench(env, "plan", "--config", str(config))
    assert plan.returncode == 0, plan.stderr[-2000:]
    # One cell (toy, ddim_eta0, K=2): its 10 samples take K = 2 network calls each.
    row = next(line.split() for line in plan.stdout.splitlines() if line.startswith("toy_fd_digits"))
    assert row[:4] == ["toy_fd_digits", "fd_digits", "1", "0"] and row[5:7] == ["10", "20"]
    bad = write_config(base, {"experiments": [{"model": "toy", "samplers": ["ddim_eta0", "pc"], "K": [2]}]})
    refused = bench(env, "validate", "--config", str(bad))
    assert refused.returncode != 0
    assert (
        "sampler 'pc' (pc) does not apply to model 'toy' of family 'toy'; that family allows "
        "['analytic_ddim', 'analytic_ddpm', 'ddim', 'ddpm', 'edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic']"
    ) in refused.stderr


@pytest.mark.slow
def test_the_dag_trains_samples_and_reports_the_toy_family(toy_package):
    base, env = toy_package
    config = write_config(base)
    work = base / "run"
    snakefile = Path(env["PYTHONPATH"]) / "Snakefile"
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--cores", "2", "--configfile", str(config),
         "--directory", str(work)],
        cwd=env["PYTHONPATH"], env=env, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "results" / "models" / "toy.pt").is_file()
    with open(work / "results" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["model"] == "toy"]
    fd = [row for row in rows if row["metric"] == "fd_digits"]
    assert [(row["family"], row["sampler"], row["K"], row["status"]) for row in fd] == [("toy", "ddim_eta0", "2", "ok")]
    html = (work / "reports" / "table_toy_fd_digits.html").read_text()
    assert "Toy, DDIM" in html and f"{float(fd[0]['value']):.2f}" in html
