"""The CLI only dispatches: each step is run() of its module under bench/steps/, called with its flags; the
sample shard's arrays are defined once, beside the code that writes them."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.checkpoints.model_file import save_model
from bench.cli import STEPS, build_parser, main
from bench.core.schedules import DiscreteSchedule
from bench.nets.factory import build_network
from bench.runtime.io import CorruptFileError, atomic_npz, load_npz
from bench.steps.sample import sample_shard
from bench.steps.shard_format import FailedShard, SampleShard
from bench.steps.validate import project_root

ROOT = Path(__file__).resolve().parents[1]
DDIM = {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}}


def _step_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: parser for name, parser in sub.choices.items() if name != "perf"}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_runs_its_modules_run_with_exactly_its_flags(step):
    flags = {a.dest for a in _step_parsers()[step]._actions if not isinstance(a, argparse._HelpAction)}
    run = importlib.import_module(f"bench.steps.{STEPS[step][0]}").run
    assert set(inspect.signature(run).parameters) == flags


def test_path_flags_reach_the_steps_as_paths():
    args = _step_parsers()["fd-is"].parse_args(
        ["--spec", "{}", "--out", "r.json", "--features", "a.npz", "b.npz", "--reference", "ref.npz"]
    )
    assert args.features == [Path("a.npz"), Path("b.npz")] and args.reference == Path("ref.npz")
    assert args.spec == {} and args.out == Path("r.json")


def test_config_paths_resolve_against_the_checkout_that_holds_the_snakefile():
    assert project_root() == ROOT


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_network({"type": "mlp", "width": 16, "depth": 1, "emb_dim": 8}, channels=1, image_size=8).eval()
    out = tmp_path_factory.mktemp("shard") / "shard0000.npz"
    return sample_shard(net, DiscreteSchedule.named("linear", 100), DDIM, 3, 0, 4, base_seed=5, shape=(1, 8, 8),
                        max_level=16, batch_size=4, out_path=out, context="test", speed={"channels_last": True})


def test_the_sample_step_writes_exactly_the_arrays_of_the_shard_format(shard):
    arrays = load_npz(shard)
    # an unconditional model's shard has no labels (tests/test_class_conditional.py covers conditional ones)
    assert list(arrays) == [f.name for f in fields(SampleShard) if f.name != "labels"]
    dtypes = {k: str(v.dtype) for k, v in arrays.items() if v.dtype.kind != "U"}
    assert dtypes == {"images": "uint8", "seeds": "int64", "max_level": "int64", "grid": "int64", "nfe": "int64",
                      "wall_seconds": "float64", "device_seconds": "float64"}
    loaded = SampleShard.load(shard)
    assert loaded.seeds.tolist() == [5, 6, 7, 8] and loaded.max_level == 16 and loaded.device == "cpu"
    assert loaded.nfe == int(arrays["nfe"]) > 0 and loaded.grid.tolist() == arrays["grid"].tolist()
    assert json.loads(loaded.speed) == {"channels_last": True}
    assert loaded.images.shape == (4, 1, 8, 8) and int(loaded.images.max()) <= 16


def test_a_shard_lacking_an_array_is_refused_naming_it(shard, tmp_path):
    arrays = load_npz(shard)
    del arrays["grid"]
    path = atomic_npz(tmp_path / "shard0000.npz", **arrays)
    with pytest.raises(CorruptFileError, match=r"lacks arrays \['grid'\]: it is not a complete shard"):
        SampleShard.load(path)


def test_a_failed_shard_passes_its_error_on(tmp_path):
    path = atomic_npz(tmp_path / "shard0000.npz", error=np.array("final sample is not finite"), seeds=np.arange(4))
    with pytest.raises(FailedShard, match="final sample is not finite"):
        SampleShard.load(path)


def test_the_features_step_names_an_incomplete_shard_without_a_traceback(shard, tmp_path, capsys):
    arrays = load_npz(shard)
    del arrays["nfe"]
    path = atomic_npz(tmp_path / "shard0000.npz", **arrays)
    spec = {"extractor": {"kind": "digits_cnn", "dataset": "digits"}}
    code = main(["features", "--spec", json.dumps(spec), "--extractor", str(tmp_path / "x.npz"), "--shard",
                 str(path), "--out", str(tmp_path / "features.npz")])
    assert code == 1
    assert capsys.readouterr().err == (
        f"error: sample shard {path} lacks arrays ['nfe']: it is not a complete shard\n"
    )
    assert not (tmp_path / "features.npz").exists()


def test_a_sampler_that_needs_gamma_without_moments_is_refused(tmp_path):
    net = build_network({"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, channels=1, image_size=8)
    cfg = {"network": {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, "family": "ddpm",
           "schedule": {"name": "linear", "T": 100}}
    model = save_model(tmp_path / "mlp.pt", net, cfg, (1, 8, 8), 16, {})
    spec = {"sampler": {"fn": "analytic_ddpm", "grid": "even", "inputs": {"gamma": "moments"}}, "K": 2,
            "start": 0, "stop": 2, "seed": 0, "batch_size": 2, "context": "test"}
    with pytest.raises(SystemExit, match="this sampler needs --moments"):
        main(["sample", "--spec", json.dumps(spec), "--model", str(model), "--out", str(tmp_path / "s.npz")])
