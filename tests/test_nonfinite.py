"""A network that emits NaN makes its cell fail with a message naming model, sampler, K, step and sample;
no metric is computed for it, the rest of the DAG goes on and the report marks the cell failed."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fault_dag import small_config, snakemake
from torch import nn

from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.runtime.io import load_npz
from bench.steps.sample import sample_shard


class NaNBelow(nn.Module):
    """Returns zeros, except NaN for sample ``bad_row`` of a batch once the timestep drops below ``step``."""

    def __init__(self, step: int, bad_row: int):
        super().__init__()
        self.step, self.bad_row = step, bad_row
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        out = torch.zeros_like(x)
        if t[0] < self.step:
            out[self.bad_row] = float("nan")
        return out


def test_nan_cell_is_recorded_as_failed_with_its_coordinates(tmp_path, capsys):
    sch = DiscreteSchedule.named("linear", 100)
    sampler = {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}}
    path = sample_shard(NaNBelow(30, bad_row=3), sch, sampler, 10, 20, 30, base_seed=100, shape=(1, 8, 8),
                        max_level=16, batch_size=5, out_path=tmp_path / "shard.npz",
                        context="model mlp, sampler ddim_eta0, K=10")
    record = load_npz(path)
    assert "images" not in record
    message = str(record["error"])
    # uniform grid for T=100, K=10 is 0, 10, ..., 90: the first step below 30 is timestep index 20.
    assert "model mlp, sampler ddim_eta0, K=10" in message
    assert "step 20" in message and "sample index 23 (seed 123)" in message
    assert message in capsys.readouterr().err
    assert np.array_equal(record["seeds"], np.arange(120, 130))


@pytest.mark.slow
def test_nan_model_fails_its_cell_and_the_rest_of_the_dag_goes_on(tmp_path):
    config = small_config(tmp_path, samplers=("ddim_eta0",), K=(5,), name="nan",
                          sampling={"n_samples": 20, "shard_size": 20, "batch_size": 20, "seed": 0})
    cfg = yaml.safe_load(config.read_text())
    cfg["models"]["poisoned"] = cfg["models"]["mlp"]
    cfg["experiments"].append({"model": "poisoned", "samplers": ["ddim_eta0"], "K": [5]})
    table_path = Path(cfg["tables"][0])
    table = yaml.safe_load(table_path.read_text())
    table["rows"].append({"label": "poisoned", "model": "poisoned", "sampler": "ddim_eta0"})
    table_path.write_text(yaml.safe_dump(table))
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    work = tmp_path / "work"
    r = snakemake(config, work, "results/models/poisoned.pt")
    assert r.returncode == 0, r.stderr[-3000:]
    model = work / "results/models/poisoned.pt"
    ckpt = torch.load(model, weights_only=True)
    ckpt["state_dict"]["out.bias"][5] = float("nan")  # every sample's output turns NaN at the first step
    torch.save(ckpt, model)

    r = snakemake(config, work, "--keep-going", cores=2)
    assert r.returncode == 0, r.stderr[-3000:]
    first_step = int(time_grid("uniform", 100, 5)[-1])
    assert (f"error: model poisoned, sampler ddim_eta0, K=5: network output is not finite at step {first_step} "
            "(timestep index) for sample index 0 (seed 0)") in r.stderr
    results = work / "results"
    assert json.loads((results / "cells/digits/poisoned/ddim_eta0/K5/fd_is.json").read_text())["status"] == "failed"
    with open(results / "metrics.csv") as f:
        rows = {(row["model"], row["metric"]): row for row in csv.DictReader(f)}
    for metric in ("fd_digits", "is_digits"):
        assert rows["poisoned", metric]["status"] == "failed" and rows["poisoned", metric]["value"] == ""
        assert rows["mlp", metric]["status"] == "ok" and np.isfinite(float(rows["mlp", metric]["value"]))
    page = (work / "reports/table_nan.html").read_text()
    assert page.count("cell status-failed") == 1 and page.count("cell status-ok") == 1
    assert 'data-failed="1"' in (work / "reports/index.html").read_text()


def test_sample_grids_skip_a_failed_cells_record(tmp_path):
    from bench.report.image_grids import write_sample_grids
    from bench.runtime.io import atomic_npz

    samples = tmp_path / "samples/digits/mlp"
    atomic_npz(samples / "ok/K5/shard0000.npz", images=np.full((4, 1, 8, 8), 16, np.uint8), seeds=np.arange(4),
               max_level=np.int64(16))
    atomic_npz(samples / "bad/K5/shard0000.npz", error=np.array("model mlp, sampler bad, K=5: ..."), seeds=np.arange(4))
    grids = write_sample_grids(tmp_path / "samples", tmp_path / "report")
    assert set(grids) == {("digits", "mlp", "ok", 5)}
    assert (tmp_path / "report/samples/digits/mlp/ok/K5.png").exists()
    assert not (tmp_path / "report/samples/digits/mlp/bad").exists()
