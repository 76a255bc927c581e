"""Faults: bad files get errors that name them."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.checkpoints.model_file import load_model
from bench.runtime.io import CorruptFileError, atomic_npz, load_npz

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1"]


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
    from bench.checkpoints.model_file import save_model
    from bench.nets.factory import build_network

    net = build_network({"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, channels=1, image_size=8)
    cfg = {"network": {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}, "schedule": {"name": "linear", "T": 100}}
    path = save_model(tmp_path / "m.pt", net, cfg, (1, 8, 8), 16, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["out.bias"]
    torch.save(ckpt, path)
    with pytest.raises(CorruptFileError, match=r"missing keys \['out\.bias'\], unexpected keys \['extra\.weight'\]"):
        load_model(path)


def test_checkpoint_with_wrongly_shaped_tensor_names_file_and_tensor(tmp_path):
    from bench.checkpoints.model_file import save_model
    from bench.nets.factory import build_network

    network = {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}
    net = build_network(network, channels=1, image_size=8)
    path = save_model(tmp_path / "m.pt", net, {"network": network, "schedule": {"name": "linear", "T": 100}},
                      (1, 8, 8), 16, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["out.bias"] = torch.zeros(3)
    torch.save(ckpt, path)
    with pytest.raises(CorruptFileError, match=r"m\.pt: state dict does not match network 'mlp': .*size mismatch for "
                                               r"out\.bias: .*torch\.Size\(\[3\]\)"):
        load_model(path)


def _stats_file(tmp_path: Path) -> Path:
    from bench.metrics.feature_stats import FeatureStats

    feats = np.random.default_rng(0).normal(size=(20, 4))
    return FeatureStats(n=20, sum=feats.sum(0), sum_outer=feats.T @ feats).save(tmp_path / "digits-digits_cnn.npz")


def _moments_file(tmp_path: Path) -> Path:
    from bench.methods.analytic import save_moments

    return save_moments(tmp_path / "mlp.npz", torch.linspace(0.1, 1, 10), model_hash="abc", n_samples=5, seed=0)


def _extractor_file(tmp_path: Path) -> Path:
    from bench.metrics.classifier import ClassifierConfig, DigitsClassifier, save_classifier

    return save_classifier(DigitsClassifier(ClassifierConfig()), tmp_path / "digits_cnn.npz")


def _load_stats(path: Path):
    from bench.metrics.feature_stats import FeatureStats

    return FeatureStats.load(path)


def _load_moments(path: Path):
    from bench.methods.analytic import load_moments

    return load_moments(path)


def _load_extractor(path: Path):
    from bench.metrics.classifier import load_classifier

    return load_classifier(path)


STATISTICS = {"feature_stats": (_stats_file, _load_stats), "moments": (_moments_file, _load_moments),
              "extractor": (_extractor_file, _load_extractor)}


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("kind", sorted(STATISTICS))
def test_damaged_statistics_file_names_the_file(tmp_path, kind, damage):
    make, load = STATISTICS[kind]
    path = make(tmp_path)
    load(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(b ^ 0x5A for b in data))
    with pytest.raises(CorruptFileError, match=rf"cannot read .*{path.name.replace('.', '[.]')}"):
        load(path)


def test_extractor_with_missing_tensor_lists_it(tmp_path):
    path = _extractor_file(tmp_path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    del arrays["state/conv2.bias"]
    np.savez(path, **arrays)
    with pytest.raises(CorruptFileError, match=r"digits_cnn\.npz: state dict does not match .*missing \['conv2.bias'\]"):
        _load_extractor(path)


def _tiny_model(tmp_path: Path) -> Path:
    from bench.checkpoints.model_file import save_model
    from bench.nets.factory import build_network

    network = {"type": "mlp", "width": 8, "depth": 1, "emb_dim": 8}
    cfg = {"network": network, "family": "ddpm", "schedule": {"name": "linear", "T": 100}}
    return save_model(tmp_path / "mlp.pt", build_network(network, channels=1, image_size=8), cfg, (1, 8, 8), 16, {})


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _sample_args(tmp_path: Path) -> tuple[list[str], Path]:
    spec = {"sampler": {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}}, "K": 2, "start": 0, "stop": 4,
            "seed": 0, "batch_size": 4, "context": "model mlp, sampler ddim, K=2"}
    model = _truncate(_tiny_model(tmp_path))
    return ["sample", "--spec", json.dumps(spec), "--model", str(model), "--out", str(tmp_path / "s.npz")], model


def _features_args(tmp_path: Path) -> tuple[list[str], Path]:
    shard = _truncate(atomic_npz(tmp_path / "shard0000.npz", images=np.zeros((4, 1, 8, 8), np.uint8),
                                 seeds=np.arange(4)))
    spec = {"extractor": {"kind": "digits_cnn", "dataset": "digits"}}
    return ["features", "--spec", json.dumps(spec), "--extractor", str(tmp_path / "x.pt"), "--shard", str(shard),
            "--out", str(tmp_path / "features.npz")], shard


@pytest.mark.parametrize("step", [_sample_args, _features_args], ids=["sample", "features"])
def test_job_on_damaged_input_fails_with_one_line_naming_it(tmp_path, step):
    args, damaged = step(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: cannot read {damaged}: ")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "features.npz").exists()


def test_job_killed_while_writing_leaves_no_output_and_the_rerun_clears_its_temp_file(tmp_path):
    out = tmp_path / "shard0000.npz"
    writer = textwrap.dedent(f"""
        import sys, time
        from bench.runtime.io import atomic_write

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"PK" + bytes(4096))  # the start of an .npz (a zip) that never gets its end
                f.flush()
                print("writing", flush=True)
                time.sleep(120)

        atomic_write({str(out)!r}, write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # Snakemake sees a missing output, never a partial one
    [litter] = tmp_path.iterdir()
    assert litter.name.startswith(".shard0000.npz.") and litter.suffix == ".tmp" and litter.stat().st_size > 4096
    atomic_npz(out, images=np.ones((2, 1, 8, 8), np.uint8), seeds=np.arange(2))
    assert [p.name for p in tmp_path.iterdir()] == ["shard0000.npz"]
    assert load_npz(out, ("images", "seeds"))["images"].sum() == 128
