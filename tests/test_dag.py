"""The Snakemake DAG: dry runs of the shipped configs, bad configs stopped before any job, a tiny real run."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
SCHEMA = yaml.safe_load((ROOT / "bench/schema/results.schema.yaml").read_text())


def schema(name):
    return {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}


def snakemake(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def test_dry_run_of_the_default_config_plans_every_job(tmp_path):
    r = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["sample_shard"] == 57  # 57 cells x 1 shard of 2000 samples
    assert counts["fd_is"] == 57 and counts["train_model"] == 2 and counts["moments"] == 1
    # one per model, grid and K: beta, beta-tilde and analytic share the DDPM model's even grid; the OT
    # bound has its own grid; iDDPM's learned bound is on the respaced grid
    assert counts["nll"] == 3 * 5
    assert counts["report"] == 1 and counts["collect"] == 1


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "workflows/config/default.yaml").read_text())
    cfg["experiments"][0]["K"] = [10, 2000]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake("--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode != 0
    assert "experiments[0].K[1]': value 2000 is not allowed; K must be an integer in [1, T=1000]" in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    r = snakemake("--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--directory", str(work),
                  cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def test_tiny_run_metrics_match_schema(tiny_run):
    with open(tiny_run / "results/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ints = ("K", "nfe", "n_samples", "seed", "replicate")
    for row in rows:
        typed = {k: int(v) if k in ints else float(v) if k in ("value", "wall_seconds") else v for k, v in row.items()}
        jsonschema.validate(typed, schema("metrics_row"))
        assert np.isfinite(typed["value"])
    # 6 samplers x 2 K x (fd, is) + NLL of DDPM, Analytic-DDPM (even, OT) and iDDPM at 2 K; DDIM and EDM
    # have no VLB.
    assert len(rows) == 6 * 2 * 2 + 4 * 2
    nfe = {(r["sampler"], r["K"], r["nfe"]) for r in rows}
    discrete = ("ddpm_beta", "ddim_eta0", "analytic_ddpm", "analytic_ddpm_ot", "iddpm_learned")
    assert nfe == {(s, k, k) for s in discrete for k in ("2", "5")} | {
        ("edm_heun", "2", "3"), ("edm_heun", "5", "9")}  # Heun: 2N - 1
    cells = tiny_run / "results/cells/digits/mlp"
    for path in cells.glob("*/K*/fd_is.json"):
        jsonschema.validate(json.loads(path.read_text()), schema("fd_is"))
    for path in cells.glob("nll-*/K*.json"):
        jsonschema.validate(json.loads(path.read_text()), schema("nll"))
    jsonschema.validate(json.loads((tiny_run / "results/provenance.json").read_text()), schema("provenance"))


def test_tiny_run_ot_cells_visit_the_dp_trajectory_of_the_model_moments(tiny_run):
    from bench.analytic import load_moments, optimal_trajectory
    from bench.schedules import DiscreteSchedule

    gamma = load_moments(tiny_run / "results/moments/mlp.npz").gamma
    alpha_bars = DiscreteSchedule.named("linear", 100).alpha_bars
    cells = tiny_run / "results/cells/digits/mlp"
    for K in (2, 5):
        dp = optimal_trajectory(alpha_bars, gamma, K).tolist()
        shard = np.load(tiny_run / f"results/samples/digits/mlp/analytic_ddpm_ot/K{K}/shard0000.npz")
        assert shard["grid"].tolist() == dp
        assert json.loads((cells / f"analytic_ddpm_ot/K{K}/fd_is.json").read_text())["grid"] == dp
        assert json.loads((cells / f"nll-optimal/K{K}.json").read_text())["grid"] == dp
    assert dp != json.loads((cells / "nll-even/K5.json").read_text())["grid"]


def test_tiny_run_report_and_rerun_is_a_no_op(tiny_run):
    assert (tiny_run / "reports/index.html").stat().st_size > 0
    assert {p.name for p in (tiny_run / "reports/tables").glob("*.tex")} == {"tiny_fd_digits.tex", "tiny_nll.tex",
                                                                             "all.tex"}
    r = snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--directory",
                  str(tiny_run), cwd=ROOT)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr
