"""Analytic-DPM's Gamma_n for each Monte-Carlo size M (a sampler's moments_M): one moments job per (model, M)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from dag import ROOT, TINY_CONFIG, snakemake

from bench.cli import main
from bench.config import ConfigError, load_config, validate_config
from bench.data import load_dataset
from bench.methods.analytic import load_moments
from bench.runtime import device
from bench.steps.plan import plan

ANALYTIC = {"fn": "analytic_ddpm", "grid": "even", "inputs": {"gamma": "moments"}, "options": {"clip": True}}


def tiny_with_m(tmp_path: Path) -> tuple[dict, Path]:
    """The tiny config with two samplers of M = 3 (one K each), one of M = 7 and one naming the config's M."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    cfg["samplers"] |= {
        "analytic_m3": {**ANALYTIC, "label": "M=3", "moments_M": 3},
        "analytic_m3_noclip": {**ANALYTIC, "label": "M=3 no clip", "moments_M": 3, "options": {"clip": False}},
        "analytic_m7": {**ANALYTIC, "label": "M=7", "moments_M": 7},
        "analytic_m_config": {**ANALYTIC, "label": "M=config", "moments_M": cfg["moments"]["M"]},
    }
    cfg["experiments"].append(
        {"model": "mlp", "samplers": ["analytic_m3", "analytic_m3_noclip", "analytic_m7", "analytic_m_config"],
         "K": [2, 5]}
    )
    path = tmp_path / "tiny_m.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return cfg, path


def test_each_m_is_one_moments_job_shared_by_its_cells(tmp_path):
    _, path = tiny_with_m(tmp_path)
    r = snakemake("-n", "--cores", "2", "--configfile", str(path), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = re.findall(r"output: (\S*moments/\S+\.npz)", r.stdout + r.stderr)
    # M = 3 serves four cells (two samplers x two K), M = 7 two; the config's own M is the model's one file.
    assert sorted(outputs) == ["results/moments/mlp.M3.npz", "results/moments/mlp.M7.npz", "results/moments/mlp.npz"]
    shards = re.findall(r"rule sample_shard:\n\s+input: ([^\n]+)\n\s+output: \S+/mlp/(analytic_m\w+)/K", r.stdout)
    wanted = {"analytic_m3": "mlp.M3", "analytic_m3_noclip": "mlp.M3", "analytic_m7": "mlp.M7", "analytic_m_config": "mlp"}
    assert sorted(sampler for _, sampler in shards) == sorted(sorted(wanted) * 4)  # 2 K x 2 shards each
    assert all(f"results/moments/{wanted[sampler]}.npz" in inputs for inputs, sampler in shards)


def test_the_plan_counts_one_moments_job_per_model_and_m(tmp_path):
    cfg, path = tiny_with_m(tmp_path)
    total = plan(load_config(path, root=ROOT, check_paths=False), root=ROOT)[-1]
    before = plan(load_config(TINY_CONFIG, root=ROOT, check_paths=False), root=ROOT)[-1]
    T, n = cfg["models"]["mlp"]["schedule"]["T"], cfg["sampling"]["n_samples"]
    # Moments: M * T each for M = 3 and 7 (the config's M is the model's existing job); samples: K per sample.
    assert total["nfe"] - before["nfe"] == (3 + 7) * T + 4 * (2 + 5) * n
    # Two moments jobs; each of the 8 cells two shards, their features and one fd_is job.
    assert total["jobs"] - before["jobs"] == 2 + 8 * (2 * 2 + 1)


def test_each_m_has_its_own_nll_job_on_its_own_gamma(tmp_path):
    """Analytic-DPM Table 5: the analytic bound by M reads that M's Gamma_n, in a job of its own per (grid, K, M)."""
    cfg, _ = tiny_with_m(tmp_path)
    for name in ("analytic_m3", "analytic_m3_noclip", "analytic_m7", "analytic_m_config"):
        cfg["samplers"][name]["nll"] = "analytic"
    path = tmp_path / "tiny_m_nll.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    r = snakemake("-n", "--cores", "2", "--configfile", str(path), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = re.findall(r"rule (nll\w*):\n\s+input: ([^\n]+)\n\s+output: results/cells/digits/mlp/(nll-[^/]+)/K(\d)",
                      r.stdout)
    found = {(folder, int(K)): (rule, re.findall(r"results/moments/(\S+)\.npz", inputs)) for rule, inputs, folder, K in jobs}
    # The config's own M shares the model's job (and its file); M = 3 (two samplers) and M = 7 have one job per K.
    assert found == {
        ("nll-even", 2): ("nll", ["mlp"]), ("nll-even", 5): ("nll", ["mlp"]),
        ("nll-even.M3", 2): ("nll_of_size", ["mlp.M3"]), ("nll-even.M3", 5): ("nll_of_size", ["mlp.M3"]),
        ("nll-even.M7", 2): ("nll_of_size", ["mlp.M7"]), ("nll-even.M7", 5): ("nll_of_size", ["mlp.M7"]),
        ("nll-optimal", 2): ("nll", ["mlp"]), ("nll-optimal", 5): ("nll", ["mlp"]),
    }
    before = plan(load_config(tmp_path / "tiny_m.yaml", root=ROOT, check_paths=False), root=ROOT)[-1]
    after = plan(load_config(path, root=ROOT, check_paths=False), root=ROOT)[-1]
    assert after["jobs"] - before["jobs"] == 4


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}, "moments_M": 3},
         r"'samplers.bad.moments_M': value 3, but the sampler reads no Gamma_n"),
        ({**ANALYTIC, "grid": "optimal", "moments_M": 3},
         r"'samplers.bad.moments_M': value 3; a sampler with its own M may not visit a moment grid \['optimal'\]"),
        ({**ANALYTIC, "moments_M": 0}, r"'samplers.bad.moments_M': value 0 must be >= 1"),
    ],
)
def test_moments_m_is_refused_where_it_cannot_hold(tmp_path, entry, message):
    cfg, _ = tiny_with_m(tmp_path)
    cfg["samplers"]["bad"] = {"label": "bad", **entry}
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, root=ROOT)


def test_sample_and_nll_jobs_refuse_gamma_of_another_m_and_moments_refuse_m_beyond_the_split(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(device.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setattr(device, "_CHOICE", None)
    monkeypatch.setattr(device, "_CLAIM", None)
    tiny = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    dataset, model = tiny["datasets"]["digits"], tmp_path / "mlp.pt"
    main(["train", "--spec", json.dumps({"model": tiny["models"]["mlp"], "dataset": dataset}), "--out", str(model)])
    moments = tmp_path / "mlp.M3.npz"
    main(["moments", "--spec", json.dumps({**tiny["moments"], "M": 3, "dataset": dataset}), "--model", str(model),
          "--out", str(moments)])
    assert load_moments(moments).n_samples == 3

    def sample(M: int) -> Path:
        spec = {"sampler": {**ANALYTIC, "moments_M": M}, "K": 2, "start": 0, "stop": 4, "seed": 0, "batch_size": 4,
                "context": "cell c"}
        out = tmp_path / f"shard_M{M}.npz"
        main(["sample", "--spec", json.dumps(spec), "--model", str(model), "--moments", str(moments), "--out", str(out)])
        return out

    assert sample(3).is_file()
    with pytest.raises(SystemExit, match=r"cell c: the sampler's moments_M is 4, but \S+mlp.M3.npz was estimated from "
                                         r"M = 3 images"):
        sample(4)

    def nll(M: int) -> dict:
        spec = {"dataset": dataset, "split": "test", "clip_x0": True, "grid": "even", "K": 2, "seed": 0,
                "variances": ["analytic"], "moments_M": M}
        out = tmp_path / f"nll_M{M}.json"
        main(["nll", "--spec", json.dumps(spec), "--model", str(model), "--moments", str(moments), "--out", str(out)])
        return json.loads(out.read_text(encoding="utf-8"))

    assert nll(3)["moments_M"] == 3
    with pytest.raises(SystemExit, match=r"NLL of model \S+mlp.pt on grid even: the sampler's moments_M is 4, but "
                                         r"\S+mlp.M3.npz was estimated from M = 3 images"):
        nll(4)
    n_train = len(load_dataset(dataset, "train").images)
    with pytest.raises(SystemExit, match=rf"moments: M = {n_train + 1} exceeds the {n_train} images of split 'train'"):
        main(["moments", "--spec", json.dumps({**tiny["moments"], "M": n_train + 1, "dataset": dataset}),
              "--model", str(model), "--out", str(tmp_path / "too_many.npz")])
