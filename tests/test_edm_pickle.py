"""EDM pickles read without the official code, and the checkpoint registry against the facts CSV.

The test writes its own EDM-layout pickle: stand-in `torch_utils.persistence` and `dnnlib.util`
modules exist only while pickling, so loading has to do without them, as it must for the
released files.
"""

from __future__ import annotations

import csv
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from edm_pickle_fixtures import STAND_IN_MODULES, official_stand_ins, persistent
from torch import nn

from bench.checkpoints.edm_pickle import (
    EdmPickleError,
    ForbiddenGlobal,
    load_edm_pickle,
    unpickle_edm,
)
from bench.checkpoints.registry import (
    REGISTRY_PATH,
    RegistryError,
    UnknownCheckpoint,
    get_checkpoint,
    load_registry,
    validate_registry,
)

TESTS = Path(__file__).parent


@persistent
class TinyConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.register_parameter("bias", None)
        self.register_buffer("resample_filter", torch.tensor([1.0, 3.0, 3.0, 1.0]))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


@persistent
class TinyUNet(nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim, model_channels,
                 channel_mult, dropout):
        super().__init__()
        self.register_buffer("freqs", torch.randn(4))
        self.enc = nn.ModuleDict()
        self.enc["conv0"] = TinyConv(in_channels, model_channels, 3)
        self.enc["norm0"] = nn.GroupNorm(2, model_channels)
        self.dec = nn.ModuleDict({"aux_conv": TinyConv(model_channels, out_channels, 1)})
        self.map_label = nn.Linear(label_dim, model_channels, bias=False)
        self.skip_scale = np.float64(np.sqrt(0.5))


@persistent
class TinyPrecond(nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim, sigma_data=0.5,
                 model_type="TinyUNet", **model_kwargs):
        super().__init__()
        self.sigma_data = sigma_data
        self.model = TinyUNet(img_resolution=img_resolution, in_channels=img_channels,
                              out_channels=img_channels, label_dim=label_dim, **model_kwargs)


@persistent
class TinyLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data


def _marker_src(marker: Path) -> str:
    return (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
        "raise RuntimeError('module_src must never be executed')\n"
    )


@pytest.fixture
def edm_pickle(tmp_path):
    """Write an EDM-layout snapshot; return (path, ema module, marker path)."""
    torch.manual_seed(0)
    marker = tmp_path / "module_src_ran"
    path = tmp_path / "network-snapshot.pkl"
    with official_stand_ins(_marker_src(marker)) as easy_dict:
        ema = TinyPrecond(img_resolution=8, img_channels=3, label_dim=10,
                          sigma_data=np.float64(0.5), model_channels=4,
                          channel_mult=[1, 2], dropout=np.float64(0.13))
        ema.eval().requires_grad_(False)
        data = {
            "ema": ema,
            "loss_fn": TinyLoss(P_mean=-1.2),
            "augment_pipe": None,
            "dataset_kwargs": easy_dict(path="cifar10-32x32.zip", resolution=32),
        }
        path.write_bytes(pickle.dumps(data, protocol=4))
    return path, ema, marker


def test_written_pickle_needs_the_official_modules(edm_pickle):
    path, _, _ = edm_pickle
    blob = path.read_bytes()
    assert b"_reconstruct_persistent_obj" in blob and b"module_src must never" in blob
    with pytest.raises(ModuleNotFoundError, match="torch_utils"):
        pickle.loads(blob)


def test_state_dict_and_init_kwargs_are_recovered(edm_pickle):
    path, ema, marker = edm_pickle
    expected = ema.state_dict()
    net = load_edm_pickle(path)
    assert list(net.state_dict) == list(expected)
    assert "model.enc.norm0.weight" in net.state_dict  # plain torch class inside a ModuleDict
    assert "model.enc.conv0.scratch" not in net.state_dict  # non-persistent buffer
    for key, value in expected.items():
        assert net.state_dict[key].dtype == value.dtype, key
        assert torch.equal(net.state_dict[key], value), key
    assert net.precond_class_name == "TinyPrecond"
    assert net.backbone_class_name == "TinyUNet"
    assert net.precond_init_kwargs == {
        "img_resolution": 8, "img_channels": 3, "label_dim": 10, "sigma_data": 0.5,
        "model_channels": 4, "channel_mult": [1, 2], "dropout": 0.13,
    }
    assert type(net.precond_init_kwargs["sigma_data"]) is float
    assert net.backbone_init_kwargs == {
        "img_resolution": 8, "in_channels": 3, "out_channels": 3, "label_dim": 10,
        "model_channels": 4, "channel_mult": [1, 2], "dropout": 0.13,
    }
    assert not marker.exists()
    assert not any(name in sys.modules for name in STAND_IN_MODULES)


def test_rest_of_the_snapshot_is_kept_as_data(edm_pickle):
    path, _, marker = edm_pickle
    data = unpickle_edm(path)
    assert sorted(data) == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"]
    assert data["augment_pipe"] is None
    assert data["dataset_kwargs"] == {"path": "cifar10-32x32.zip", "resolution": 32}
    assert data["loss_fn"].class_name == "TinyLoss"
    assert data["loss_fn"].state["P_mean"] == -1.2
    assert not marker.exists()


def _handwritten_os_system(command: str) -> bytes:
    return f"cos\nsystem\n(S{command!r}\ntR.".encode()


def test_os_system_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_handwritten_os_system(f"touch {marker}"))
    with pytest.raises(ForbiddenGlobal, match=r"evil\.pkl: refusing global 'os\.system'") as caught:
        load_edm_pickle(path)
    assert caught.value.global_name == "os.system"
    assert not marker.exists()


class _RunsAShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return subprocess.getoutput, (self.command,)


def test_forbidden_global_deep_inside_a_snapshot_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "snapshot.pkl"
    with official_stand_ins(_marker_src(tmp_path / "unused")):
        ema = TinyPrecond(img_resolution=8, img_channels=3, label_dim=2, model_channels=4,
                          channel_mult=[1], dropout=0.0)
        data = {"ema": ema, "dataset_kwargs": {"hook": _RunsAShell(f"touch {marker}")}}
        path.write_bytes(pickle.dumps(data, protocol=4))
    with pytest.raises(ForbiddenGlobal, match="'subprocess.getoutput'"):
        load_edm_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins.eval", "torch.load", "numpy.load"])
def test_other_globals_outside_the_allow_list_are_refused(tmp_path, global_name):
    module, name = global_name.rsplit(".", 1)
    path = tmp_path / "x.pkl"
    path.write_bytes(f"c{module}\n{name}\n(S'1'\ntR.".encode())
    with pytest.raises(ForbiddenGlobal, match=f"'{global_name}'"):
        unpickle_edm(path)


def test_truncated_pickle_names_the_file(edm_pickle, tmp_path):
    path, _, _ = edm_pickle
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(EdmPickleError, match=r"cut\.pkl is truncated or corrupted"):
        load_edm_pickle(cut)


def test_pickle_without_ema_is_rejected(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=4))
    with pytest.raises(EdmPickleError, match=r"dict with key 'ema'; found \['weights'\]"):
        load_edm_pickle(path)


# ---- registry.yaml against the facts in checkpoints.csv ------------------------------------


def _csv_rows() -> list[dict[str, str]]:
    with open(TESTS / "data" / "checkpoints.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_registry_matches_checkpoints_csv():
    rows = _csv_rows()
    registry = load_registry()
    for entry in registry.values():
        matches = [r for r in rows if r["url"] == entry.url and r["family"] == entry.family
                   and r["dataset"] == entry.dataset]
        assert len(matches) == 1, f"{entry.name}: url/family/dataset not one row of the CSV"
        row = matches[0]
        assert entry.source == row["source"], entry.name
        if row["hash"]:
            assert (entry.hash_type, entry.hash) == (row["hash_type"], row["hash"]), entry.name
        else:
            assert (entry.hash_type, entry.hash) == ("none", None), entry.name
    md5_urls = {r["url"] for r in rows if r["hash_type"] == "md5"}
    assert md5_urls <= {e.url for e in registry.values()}


def test_registry_architectures_name_manifests():
    for entry in load_registry().values():
        if entry.architecture is None:
            continue
        manifest = TESTS / "manifests" / f"{entry.architecture}.json"
        assert manifest.is_file(), f"{entry.name}: no manifest {manifest.name}"
        released = yaml.safe_load(manifest.read_text()).get("released_pickle")
        if released is not None:
            assert entry.url.endswith("/" + released), entry.name


def test_registry_errors_name_entry_and_key():
    data = yaml.safe_load(REGISTRY_PATH.read_text())
    data["checkpoints"][1]["hash_type"] = "sha1"
    del data["checkpoints"][2]["url"]
    data["checkpoints"][3]["hash"] = "abc"
    name1, name2, name3 = (data["checkpoints"][i]["name"] for i in (1, 2, 3))
    with pytest.raises(RegistryError) as caught:
        validate_registry(data)
    message = str(caught.value)
    assert f"entry #1 ('{name1}'), key 'hash_type': 'sha1' is not one of" in message
    assert f"entry #2 ('{name2}'), key 'url': 'url' is a required property" in message
    data["checkpoints"][1]["hash_type"] = "md5"
    data["checkpoints"][2]["url"] = "https://example.org/x"
    with pytest.raises(RegistryError, match=rf"entry #3 \('{name3}'\), key 'hash': 3 hex digits"):
        validate_registry(data)


def test_unknown_checkpoint_lists_known_names():
    registry = load_registry()
    assert get_checkpoint("ddpm_ema_cifar10", registry).hash == "1fa350b952534ae442b1d5235cce5cd3"
    with pytest.raises(UnknownCheckpoint, match="'ddpm_cifar100'.*ddpm_ema_cifar10") as caught:
        get_checkpoint("ddpm_cifar100", registry)
    assert all(name in str(caught.value) for name in registry)



@pytest.mark.parametrize("numpy_module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_scalars_from_numpy_1_and_2_pickles(tmp_path, numpy_module):
    blob = pickle.dumps({"ema": None, "skip_scale": np.float64(0.25)}, protocol=3)
    blob = re.sub(rb"numpy\.(_?)core\.multiarray\n", numpy_module + b"\n", blob)
    assert numpy_module + b"\nscalar" in blob
    path = tmp_path / "scalars.pkl"
    path.write_bytes(blob)
    value = unpickle_edm(path)["skip_scale"]
    assert value == 0.25 and isinstance(value, np.float64)
