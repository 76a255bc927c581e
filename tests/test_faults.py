"""Faults: bad files get errors that name them."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.io import CorruptFileError, atomic_npz, load_npz
from bench.models import load_model

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
