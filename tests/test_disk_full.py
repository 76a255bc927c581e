"""A sampling job that runs out of space fails cleanly (one error line, nothing left behind) and reruns once space is free."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.checkpoints.model_file import save_model
from bench.nets.factory import build_network
from bench.runtime.io import load_npz

ROOT = Path(__file__).resolve().parents[1]
N = 400  # 400 samples of 8x8 uint8: a shard of about 30 KB


@pytest.fixture
def model(tmp_path) -> Path:
    network = {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}
    cfg = {"network": network, "family": "ddpm", "schedule": {"name": "linear", "T": 100}}
    return save_model(tmp_path / "mlp.pt", build_network(network, channels=1, image_size=8), cfg, (1, 8, 8), 16, {})


def sample_job(model: Path, out: Path, preexec_fn=None) -> subprocess.CompletedProcess:
    spec = {"sampler": {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}}, "K": 2, "start": 0, "stop": N,
            "seed": 0, "batch_size": N, "context": "model mlp, sampler ddim, K=2"}
    return subprocess.run([sys.executable, "-m", "bench", "sample", "--spec", json.dumps(spec), "--model", str(model),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def assert_complete(out: Path) -> None:
    shard = load_npz(out, ("images", "seeds"))
    assert shard["images"].shape == (N, 1, 8, 8) and np.array_equal(shard["seeds"], np.arange(N))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root, as here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                           text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: test_file_size_limit_fails_cleanly_and_rerun_completes covers a full disk")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip()}): test_file_size_limit_... covers a full disk")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_fails_cleanly_and_rerun_after_freeing_space_completes(model, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(bytes(240 * 1024))  # 16 KiB left
    out = small_disk / "shard0000.npz"
    r = sample_job(model, out)
    assert r.returncode == 1
    assert f"error: [Errno 28] cannot write {out}: No space left on device" in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in small_disk.iterdir()] == ["filler"]  # no partial shard, no temporary file
    filler.unlink()
    r = sample_job(model, out)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in small_disk.iterdir()] == ["shard0000.npz"]
    assert_complete(out)


def test_file_size_limit_fails_cleanly_and_rerun_completes(model, tmp_path):
    out = tmp_path / "samples" / "shard0000.npz"
    r = sample_job(model, out, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024)))
    assert r.returncode == 1
    assert f"error: [Errno 27] cannot write {out}: File too large" in r.stderr
    assert "Traceback" not in r.stderr
    assert list(out.parent.iterdir()) == []
    r = sample_job(model, out)
    assert r.returncode == 0, r.stderr
    assert_complete(out)
