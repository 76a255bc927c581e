"""A sampler added as one module: validated, planned, run by the DAG and reported, no other file touched."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from dag import ROOT, TINY_CONFIG

# Euler's method on the probability-flow ODE in sigma (EDM Alg. 1 without Heun's correction), with a
# step-size factor as its one option: K network calls on a K-step grid.
TOY_MODULE = '''"""A toy sampler for the tests: Euler steps of dx/dsigma = (x - D(x; sigma)) / sigma."""

import torch

from bench.core.noise import NoiseSource
from bench.samplers.spec import SamplerSpec


def euler(denoiser, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource, scale: float = 1.0) -> torch.Tensor:
    """x_{i+1} = x_i + scale (sigma_{i+1} - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i."""
    x = x_T
    for sigma, sigma_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x = x + scale * (sigma_next - sigma) * (x - denoiser(x, sigma)) / sigma
    return x


SPEC = SamplerSpec("toy_euler", euler, "sigma", lambda K, options: K)
'''
N_SAMPLES, K = 20, 3
TABLE = {
    "id": "toy_fd",
    "title": "Toy sampler: FD (digits classifier features)",
    "metric": "fd_digits",
    "metric_label": "FD (digits)",
    "better": "lower",
    "decimals": 2,
    "dataset": "digits",
    "columns": {"field": "K", "values": [K], "label": "K"},
    "rows": [{"label": "Toy Euler", "latex": "Toy Euler", "model": "mlp", "sampler": "toy"}],
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the checkout's package and workflow with one new sampler module, and a config that uses it."""
    tmp = tmp_path_factory.mktemp("toy")
    for part in ("bench", "workflows"):
        shutil.copytree(ROOT / part, tmp / "pkg" / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", tmp / "pkg/Snakefile")
    (tmp / "pkg/bench/samplers/toy_euler.py").write_text(TOY_MODULE)
    (tmp / "toy_fd.yaml").write_text(yaml.safe_dump(TABLE, allow_unicode=True))
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    cfg = {
        **{k: tiny[k] for k in ("profile", "seed", "datasets", "extractors")},
        "models": {"mlp": tiny["models"]["mlp"]},
        "samplers": {"toy": {"fn": "toy_euler", "label": "Toy Euler", "grid": "edm", "options": {"scale": 1.0}}},
        "experiments": [{"model": "mlp", "samplers": ["toy"], "K": [K]}],
        "sampling": {"n_samples": N_SAMPLES, "shard_size": N_SAMPLES, "batch_size": N_SAMPLES, "seed": 0},
        "metrics": {"fd_is": tiny["metrics"]["fd_is"]},
        "tables": [str(tmp / "toy_fd.yaml")],
    }
    config = tmp / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = dict(os.environ, PYTHONPATH=str(tmp / "pkg"), PYTHONUNBUFFERED="1")
    return {"tmp": tmp, "config": config, "cfg": cfg, "env": env, "snakefile": tmp / "pkg/Snakefile"}


def _bench(toy: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=toy["tmp"], env=toy["env"],
                          capture_output=True, text=True, timeout=300)


def test_the_toy_sampler_is_validated(toy):
    r = _bench(toy, "validate", "--configfile", str(toy["config"]))
    assert r.returncode == 0, r.stderr
    bad = {**toy["cfg"], "samplers": {"toy": {**toy["cfg"]["samplers"]["toy"], "options": {"scal": 1.0}}}}
    path = toy["tmp"] / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, allow_unicode=True))
    r = _bench(toy, "validate", "--configfile", str(path))
    assert r.returncode != 0
    assert "config key 'samplers.toy.options.scal': unknown option 'scal' of sampler function 'toy_euler'" in r.stderr
    wrong_grid = {**toy["cfg"], "samplers": {"toy": {"fn": "toy_euler", "grid": "even"}}}
    path.write_text(yaml.safe_dump(wrong_grid, allow_unicode=True))
    r = _bench(toy, "validate", "--configfile", str(path))
    assert "value 'even' is not a sigma grid, which sampler function 'toy_euler' needs" in r.stderr


def test_the_toy_sampler_is_planned_with_its_nfe(toy):
    r = _bench(toy, "plan", "--configfile", str(toy["config"]))
    assert r.returncode == 0, r.stderr
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("toy_fd"))
    # one sample_shard, one features and one fd_is job
    assert row[:6] == ["toy_fd", "fd_digits", "1", "0", "3", f"{N_SAMPLES:,}"]
    assert row[6] == f"{N_SAMPLES * K:,}"


def test_the_dag_runs_and_reports_the_toy_sampler(toy):
    work = toy["tmp"] / "work"
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(toy["snakefile"]), "--cores", "2"]
    r = subprocess.run([*snakemake, "--configfile", str(toy["config"]), "--directory", str(work)],
                       cwd=toy["tmp"], env=toy["env"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(work / "results/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["sampler"] == "toy"]
    # the fd_is step writes the digits classifier's FD and IS of the cell, each with the shard's measured NFE
    assert sorted((row["metric"], row["K"], row["nfe"]) for row in rows) == [
        ("fd_digits", str(K), str(K)), ("is_digits", str(K), str(K))
    ]
    assert "Toy Euler" in (work / "reports/table_toy_fd.html").read_text()
    assert "Toy Euler" in (work / "reports/tables/toy_fd.tex").read_text()
