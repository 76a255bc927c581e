"""Faults: a sampling job killed mid-shard loses nothing; bad files get errors that name them."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.io import CorruptFileError, atomic_npz, load_npz
from bench.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1"]


def slow_config(tmp_path: Path) -> Path:
    """The tiny config with shards that take seconds, so a job can be killed while it samples."""
    cfg = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    cfg["models"]["mlp"]["schedule"]["T"] = 1000
    cfg["samplers"] = {"ddpm_beta": cfg["samplers"]["ddpm_beta"]}
    cfg["experiments"] = [{"model": "mlp", "samplers": ["ddpm_beta"], "K": [1000]}]
    cfg["sampling"] = {"n_samples": 40, "shard_size": 20, "batch_size": 2, "seed": 0}
    cfg["metrics"] = {"fd_is": cfg["metrics"]["fd_is"]}
    cfg.pop("moments")
    table = {"id": "slow", "title": "slow", "metric": "fd_digits", "metric_label": "FD", "better": "lower",
             "decimals": 2, "dataset": "digits", "columns": {"field": "K", "values": [1000], "label": "K"},
             "rows": [{"label": "DDPM", "model": "mlp", "sampler": "ddpm_beta"}]}
    (tmp_path / "slow_table.yaml").write_text(yaml.safe_dump(table))
    cfg["tables"] = [str(tmp_path / "slow_table.yaml")]
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def run(config: Path, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, "--configfile", str(config), "--directory", str(workdir)],
                          capture_output=True, text=True, timeout=900)


def sampling_pid(shard: str) -> int | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "bench\0sample" in cmd and shard in cmd:
                return int(pid)
    return None


def metric_values(path: Path) -> list[tuple]:
    with open(path) as f:
        return [(r["sampler"], r["K"], r["metric"], r["value"], r["n_samples"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_redoes_only_that_shard(tmp_path):
    config = slow_config(tmp_path)
    reference = tmp_path / "reference"
    assert run(config, reference).returncode == 0

    work = tmp_path / "killed"
    proc = subprocess.Popen([*SNAKEMAKE, "--configfile", str(config), "--directory", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shard = "shard0001.npz"
    deadline = time.monotonic() + 600
    pid = None
    while time.monotonic() < deadline and proc.poll() is None:
        pid = sampling_pid(shard)
        if pid is not None:
            time.sleep(3.0)  # past the imports: the job is sampling
            if sampling_pid(shard) == pid:
                os.kill(pid, signal.SIGKILL)
                break
        time.sleep(0.2)
    assert pid is not None, "the sampling job of shard0001 never started"
    proc.communicate(timeout=600)
    assert proc.returncode != 0
    cell = work / "results/samples/digits/mlp/ddpm_beta/K1000"
    assert not (cell / shard).exists()  # nothing that looks complete
    model = work / "results/models/mlp.pt"
    before = {p: p.stat().st_mtime_ns for p in (model, cell / "shard0000.npz") if p.exists()}
    assert model in before

    rerun = run(config, work)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished work was not redone
    assert metric_values(work / "results/metrics.csv") == metric_values(reference / "results/metrics.csv")
    assert not list(cell.glob(".*.tmp"))


def test_truncated_shard_names_the_file(tmp_path):
    path = atomic_npz(tmp_path / "shard0000.npz", images=np.zeros((4, 1, 8, 8), np.uint8), seeds=np.arange(4))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"cannot read .*shard0000\.npz"):
        load_npz(path)


def test_shard_missing_arrays_names_them(tmp_path):
    path = atomic_npz(tmp_path / "s.npz", seeds=np.arange(4))
    with pytest.raises(CorruptFileError, match=r"s\.npz lacks arrays \['images'\]"):
        load_npz(path, ("images", "seeds"))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_model_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "mlp.pt"
    torch.save({"format": "dpm-bench-model/1", "state_dict": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" + data[16:])
    with pytest.raises(CorruptFileError, match=r"cannot read .*mlp\.pt"):
        load_model(path)


def test_checkpoint_with_unexpected_keys_lists_them(tmp_path):
    from bench.models import build_network, save_model

    net = build_network({"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, channels=1, image_size=8)
    cfg = {"network": {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, "schedule": {"name": "linear", "T": 10}}
    path = save_model(tmp_path / "m.pt", net, cfg, (1, 8, 8), 16, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["out.bias"]
    torch.save(ckpt, path)
    with pytest.raises(CorruptFileError, match=r"missing keys \['out\.bias'\], unexpected keys \['extra\.weight'\]"):
        load_model(path)
