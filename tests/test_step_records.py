"""Every step that runs a network names its device and times in its output record (bench.runtime.stepclock)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.checkpoints.model_file import load_model
from bench.cli import main
from bench.runtime import device
from bench.runtime.stepclock import GPU_HELD_WALL, PROCESS_CPU, StepClock

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "_CHOICE", None)
    monkeypatch.setattr(device, "_CLAIM", None)
    monkeypatch.setenv(device.LOCK_DIR_ENV, str(tmp_path / "locks"))
    yield
    if device._CLAIM is not None:
        device._CLAIM.close()


def test_cpu_clock_counts_process_cpu_time(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clock = StepClock.start()
    x = torch.ones(300, 300, dtype=torch.float64)
    for _ in range(30):
        x = (x @ x).clamp(max=1.0)
    record = clock.record()
    assert record["device"] == "cpu" and record["device_clock"] == PROCESS_CPU
    assert record["device_detail"].startswith("cpu (")
    assert 0 < record["device_seconds"] <= record["wall_seconds"] * torch.get_num_threads() + 0.05


def test_gpu_clock_is_the_wall_time_the_claimed_gpu_was_held(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=0: f"Fake GPU {getattr(d, 'index', d)}")
    current, synced = [], []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    _, other_job = device.claim_gpu(["0"], device.default_lock_dir(), wait_seconds=0)
    clock = StepClock.start()
    record = clock.record()
    other_job.close()
    assert current == [torch.device("cuda", 1)] and synced == [torch.device("cuda", 1)]
    assert record["device"] == "cuda:1 (Fake GPU 1)" and record["device_clock"] == GPU_HELD_WALL
    assert record["device_seconds"] == record["wall_seconds"]


def _cpu_record_ok(record) -> None:
    assert str(record["device"]) == "cpu" and str(record["device_clock"]) == PROCESS_CPU
    assert float(record["wall_seconds"]) > 0 and float(record["device_seconds"]) > 0


def test_train_sample_moments_and_nll_steps_record_their_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.set_num_threads(1)
    dataset = TINY["datasets"]["digits"]
    model = tmp_path / "mlp.pt"
    main(["train", "--spec", json.dumps({"model": TINY["models"]["mlp"], "dataset": dataset}), "--out", str(model)])
    _cpu_record_ok(load_model(model)[2]["info"])

    moments = tmp_path / "moments.npz"
    spec = {**TINY["moments"], "M": 50, "dataset": dataset}
    main(["moments", "--spec", json.dumps(spec), "--model", str(model), "--out", str(moments)])
    with np.load(moments) as arrays:
        _cpu_record_ok({k: arrays[k] for k in arrays.files})

    shard = tmp_path / "shard0000.npz"
    sample = {"sampler": TINY["samplers"]["ddim_eta0"], "K": 2, "start": 0, "stop": 8, "seed": 0, "batch_size": 8,
              "context": "test"}
    main(["sample", "--spec", json.dumps(sample), "--model", str(model), "--out", str(shard)])
    with np.load(shard) as arrays:
        _cpu_record_ok({k: arrays[k] for k in arrays.files})
        assert float(arrays["device_seconds"]) <= float(arrays["wall_seconds"]) + 0.05  # one thread

    out = tmp_path / "nll.json"
    nll = {"dataset": dataset, "split": "test", "clip_x0": True, "grid": "even", "K": 2, "seed": 0,
           "variances": ["beta"]}
    main(["nll", "--spec", json.dumps(nll), "--model", str(model), "--out", str(out)])
    record = json.loads(out.read_text())
    _cpu_record_ok(record)
    assert record["device_detail"] == device.select_device().description
