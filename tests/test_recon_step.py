"""The recon step (DDIM Table 2): its record, its resume after a kill, its metrics.csv row and its config checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from bench.checkpoints.model_file import load_model, save_model
from bench.cli import main
from bench.config import ConfigError, load_config, read_yaml, validate_config
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import make_denoiser
from bench.metrics.recon import reconstruction_mse
from bench.nets.factory import build_network
from bench.steps import collect, recon
from bench.steps.sample import sampler_view

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"kind": "digits", "test_fraction": 0.2, "split_seed": 0}
SAMPLER = {"fn": "ddim", "grid": "quad", "options": {"eta": 0.0, "clip_x0": False}}


@pytest.fixture
def model(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}
    cfg = {"network": network, "family": "ddpm", "schedule": {"name": "linear", "T": 100}}
    return save_model(tmp_path / "mlp.pt", build_network(network, channels=1, image_size=8), cfg, (1, 8, 8), 16, {})


def spec(K: int) -> dict:
    return {"dataset": DIGITS, "split": "test", "batch_size": 100, "sampler": SAMPLER, "K": K,
            "state_dtype": "float32", "context": f"reconstruction of model mlp, K={K}"}


def run_job(model: Path, out: Path, K: int = 12) -> dict:
    assert main(["recon", "--spec", json.dumps(spec(K)), "--model", str(model), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_record_holds_the_mean_of_each_images_error_with_its_protocol(model, tmp_path):
    out = tmp_path / "recon.json"
    record = run_job(model, out)
    images = load_dataset(DIGITS, "test")
    net, schedule, _ = load_model(model)
    view, grid = sampler_view(make_denoiser("ddpm", net, schedule, (1, 8, 8)), SAMPLER, 12)
    x0 = torch.from_numpy(levels_to_unit(images.images, images.max_level))
    errors = torch.cat([reconstruction_mse(view, SAMPLER, x0[a : a + 100], grid, torch.arange(a, a + 100))[0]
                        for a in range(0, len(x0), 100)])
    assert record["status"] == "ok" and record["n"] == len(x0) == 359
    assert record["mse"] == pytest.approx(float(errors.mean()), rel=1e-12)
    assert record["mse_sem"] == pytest.approx(float(errors.std() / len(errors) ** 0.5), rel=1e-12)
    # quad K = 12 on T = 100 repeats timesteps; each pass still costs K calls, as DDIM's loop counts them
    assert record["grid"] == grid.tolist() and len(set(record["grid"])) < 12 and record["nfe"] == 24
    assert (record["scale"], record["clamped"], record["encoder"]) == ("[0, 1]", True, "ddim_ode")
    assert record["device"] == "cpu" and record["wall_seconds"] > 0
    assert not recon.partial_path(out).exists()


def test_a_job_killed_part_way_resumes_after_its_last_batch_and_writes_the_same_record(model, tmp_path, monkeypatch):
    whole = run_job(model, tmp_path / "whole.json")
    calls = []
    real = recon.reconstruction_mse

    def killed_at_third_batch(view, sampler, x0, grid, seeds):
        calls.append(int(seeds[0]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(view, sampler, x0, grid, seeds)

    monkeypatch.setattr(recon, "reconstruction_mse", killed_at_third_batch)
    out = tmp_path / "recon.json"
    with pytest.raises(KeyboardInterrupt):
        run_job(model, out)
    assert not out.exists() and recon.partial_path(out).exists()
    calls.clear()
    monkeypatch.setattr(recon, "reconstruction_mse", lambda *a: (calls.append(int(a[4][0])), real(*a))[1])
    resumed = run_job(model, out)
    assert calls == [200, 300]
    assert {k: resumed[k] for k in ("mse", "mse_sem", "nfe", "n", "grid")} == {
        k: whole[k] for k in ("mse", "mse_sem", "nfe", "n", "grid")
    }


def test_a_partial_file_of_other_settings_is_not_resumed(model, tmp_path, monkeypatch):
    out = tmp_path / "recon.json"
    real = recon.reconstruction_mse
    seen = []

    def killed_at_second_batch(*args):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(recon, "reconstruction_mse", killed_at_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_job(model, out, K=12)
    monkeypatch.setattr(recon, "reconstruction_mse", real)
    assert run_job(model, out, K=5)["mse"] == run_job(model, tmp_path / "fresh.json", K=5)["mse"]


def test_a_non_finite_decode_fails_the_record_naming_the_image(model, tmp_path, monkeypatch):
    real = recon.reconstruction_mse

    def nan_in_image_103(view, sampler, x0, grid, seeds):
        err, decoded = real(view, sampler, x0, grid, seeds)
        if int(seeds[0]) == 100:
            decoded[3] = float("nan")
        return err, decoded

    monkeypatch.setattr(recon, "reconstruction_mse", nan_in_image_103)
    record = run_job(model, tmp_path / "recon.json")
    assert record["status"] == "failed"
    assert record["error"] == "reconstruction of model mlp, K=12: decoded image not finite for test image 103"


def test_collect_writes_one_recon_mse_row_per_record():
    cell = {"dataset": "cifar10", "model": "m", "family": "ddpm", "sampler": "s", "sampler_label": "S",
            "grid": "quad", "K": 10, "seed": 0, "recon": "cells/x/recon.json"}
    ok = {"status": "ok", "mse": 0.0123, "mse_sem": 1e-4, "n": 10000, "nfe": 20, "device": "cpu",
          "device_seconds": 2.0, "wall_seconds": 3.0}
    (row,) = collect.metric_rows(cell, {"recon": ok})
    assert (row["metric"], row["value"], row["n_samples"], row["nfe"], row["K"], row["status"]) == (
        "recon_mse", 0.0123, 10000, 20, 10, "ok")
    assert set(row) == set(collect.COLUMNS)
    (failed,) = collect.metric_rows(cell, {"recon": {"status": "failed", "error": "x", "n": 10000}})
    assert (failed["status"], failed["value"]) == ("failed", "")


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)


def test_paper_profile_reconstructs_ddim_table_2s_seven_cells(paper):
    from bench.config import recon_cells

    assert [(c.model, c.sampler, c.K) for c in recon_cells(paper)] == [
        ("ddpm_cifar10", "ddim_quad_eta0", K) for K in (10, 20, 50, 100, 200, 500, 1000)
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["samplers"].update(d=dict(c["samplers"]["ddim_quad_eta02"])),
         "config key 'metrics.recon.experiments[0].samplers[0]': sampler 'd' (fn 'ddim', options {'eta': 0.2, "
         "'clip_x0': False}) is not DDIM's ODE; allowed: a sampler of fn 'ddim' with eta 0 and clip_x0 false"),
        (lambda c: c["samplers"].update(d=dict(c["samplers"]["ddpm_full"])),
         "config key 'metrics.recon.experiments[0].samplers[0]': sampler 'd' (fn 'ddpm'"),
        (lambda c: c["metrics"]["recon"]["experiments"][0].update(K=[2000]),
         "config key 'metrics.recon.experiments[0].K[0]': value 2000 is not allowed; K must be an integer in [1, T=1000]"),
        (lambda c: c["metrics"]["recon"]["experiments"][0].update(model="edm_cifar10_vp"),
         "config key 'metrics.recon.experiments[0].model': model 'edm_cifar10_vp' of family 'edm' has no DDIM sampler"),
    ],
)
def test_a_recon_experiment_that_is_not_ddims_ode_is_refused_naming_the_key(change, message):
    cfg = read_yaml(ROOT / "workflows/config/paper.yaml")
    cfg["metrics"]["recon"]["experiments"] = [{"model": "ddpm_cifar10", "samplers": ["d"], "K": [10]}]
    cfg["samplers"]["d"] = dict(cfg["samplers"]["ddim_quad_eta0"])
    cfg["tables"] = []
    change(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(cfg), root=ROOT, check_paths=False)
    assert str(err.value).startswith(message)


def test_a_table_cell_that_no_recon_experiment_defines_is_refused():
    cfg = read_yaml(ROOT / "workflows/config/paper.yaml")
    cfg["metrics"]["recon"]["experiments"][0]["K"] = [10, 20]
    with pytest.raises(ConfigError, match=r"paper_ddim_t2_recon.yaml: rows\[0\] \('DDIM encode \+ decode'\) at K=50 "
                                          r"refers to reconstruction model='ddpm_cifar10', sampler='ddim_quad_eta0', "
                                          r"K=50, which no metrics.recon experiment defines"):
        validate_config(cfg, root=ROOT, check_paths=False)


def test_plan_counts_one_job_per_reconstruction_with_2K_evaluations_per_test_image(paper):
    from bench.steps.plan import plan

    rows = {r["table"]: r for r in plan(paper, root=ROOT)}
    row = rows["paper_ddim_t2_recon"]
    assert (row["cells"], row["unavailable"], row["jobs"], row["samples"]) == (7, 0, 7, 0)
    assert row["nfe"] == 10_000 * sum(2 * K for K in (10, 20, 50, 100, 200, 500, 1000))
