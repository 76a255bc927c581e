"""score_sde_pytorch's checkpoint_N.pth -> our score-SDE networks: EMA weights, strict keys, conversion."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.checkpoints.convert import convert_checkpoint
from bench.checkpoints.layouts import CheckpointLoadError, load_score_sde_checkpoint
from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.checkpoints.score_sde_network import ema_parameter_names, load_score_sde_network
from bench.cli import main
from bench.config import load_config
from bench.families import make_denoiser
from bench.nets.score_sde_configs import SCORE_SDE_CIFAR10, SCORE_SDE_NETWORKS, build_score_sde_network

MANIFESTS = Path(__file__).parent / "manifests"
torch.set_num_threads(1)
# A small NCSN++ with every layer kind of the CIFAR-10 VE config (Fourier features, FIR BigGAN
# blocks, the residual input pyramid), for files cheap enough to write in a test.
SMALL_VE = {"type": "score_sde_ncsnpp", **SCORE_SDE_CIFAR10["ve/cifar10_ncsnpp_continuous"]["kwargs"],
            "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1}


def _official_file(path: Path, net: nn.Module, step: int = 1) -> list[torch.Tensor]:
    """What score_sde's utils.save_checkpoint writes (utils.py L22-29) for a DataParallel-wrapped net.

    Returns the EMA shadow: ExponentialMovingAverage keeps the trainable parameters only (ema.py L28).
    """
    wrapped = nn.DataParallel(net)
    optimizer = torch.optim.Adam(wrapped.parameters())
    shadow = [p.detach().clone() + 0.5 for p in wrapped.parameters() if p.requires_grad]
    ema = {"decay": 0.999, "num_updates": step, "shadow_params": shadow}
    torch.save({"optimizer": optimizer.state_dict(), "model": wrapped.state_dict(), "ema": ema, "step": step}, path)
    return shadow


def _random_net(network: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build_score_sde_network(network)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net


@pytest.mark.parametrize("stem", ["score_sde_ve_cifar10_ncsnpp_continuous", "score_sde_vp_ddpm_cifar10_continuous"])
def test_the_ema_order_is_the_official_trainable_parameters(stem):
    manifest = json.loads((MANIFESTS / f"{stem}.json").read_text())
    net = build_score_sde_network(manifest["our_network"])
    excluded = set(manifest["buffer_keys"]) | set(manifest["checkpoint"]["ema_excluded_parameters"])
    assert ema_parameter_names(net) == [k for k, _, _ in manifest["state_dict"] if k not in excluded]


def test_an_official_file_loads_with_the_ema_weights(tmp_path):
    source = _random_net(SMALL_VE, seed=0)
    path = tmp_path / "checkpoint_8.pth"
    shadow = _official_file(path, source)
    net = load_score_sde_network(path, SMALL_VE, (3, 32, 32))
    assert not net.training
    state = net.state_dict()
    trainable = ema_parameter_names(net)
    assert len(trainable) == len(shadow) == len([p for p in net.parameters()]) - 1
    assert all(torch.equal(state[k], s) for k, s in zip(trainable, shadow, strict=True))
    # Not averaged: the never-trained Fourier weights and the sigmas buffer come from 'model'.
    assert torch.equal(net.all_modules[0].W, source.all_modules[0].W)
    assert torch.equal(net.sigmas, source.sigmas)
    raw = load_score_sde_network(path, SMALL_VE, (3, 32, 32), use_ema=False)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in raw.state_dict().items())


def test_without_the_networks_parameter_names_the_fourier_weights_misalign_the_shadow(tmp_path):
    path = tmp_path / "checkpoint_8.pth"
    _official_file(path, _random_net(SMALL_VE, seed=0))
    with pytest.raises(CheckpointLoadError, match="shadow parameters but 'model' has"):
        load_score_sde_checkpoint(path)


def test_a_wrong_network_or_image_shape_is_named(tmp_path):
    path = tmp_path / "checkpoint_8.pth"
    _official_file(path, _random_net(SMALL_VE, seed=0))
    with pytest.raises(ValueError, match=r"network type must be one of \['score_sde_ddpm', 'score_sde_ncsnpp'\], "
                                         r"got 'ddpm_unet'"):
        load_score_sde_network(path, {"type": "ddpm_unet"}, (3, 32, 32))
    with pytest.raises(ValueError, match=r"makes \[3, 32, 32\] images .* the dataset has \[1, 28, 28\]"):
        load_score_sde_network(path, SMALL_VE, (1, 28, 28))


def test_a_served_official_file_is_fetched_and_converted_into_our_model_file(served, tmp_path):
    folder, base = served
    source = _random_net(SMALL_VE, seed=3)
    shadow = _official_file(folder / "checkpoint_24.pth", source, step=24)
    entry = {"name": "score_sde_ve_cifar10_small", "family": "score-SDE", "dataset": "CIFAR10",
             "url": f"{base}/checkpoint_24.pth", "hash_type": "md5",
             "hash": hashlib.md5((folder / "checkpoint_24.pth").read_bytes()).hexdigest(),
             "layout": "score_sde_dict", "architecture": None, "source": "test", "note": "random weights"}
    ckpt = tmp_path / "resources/checkpoints/score_sde.pth"
    assert main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}),
                 "--lock", str(tmp_path / "lock.json"), "--out", str(ckpt)]) == 0
    model_cfg = {"dataset": "cifar10", "family": "ve", "checkpoint": entry["name"], "network": SMALL_VE,
                 "schedule": {"name": "ve", "sigma_min": 0.01, "sigma_max": 50}}
    spec = {"model": model_cfg, "dataset": {"kind": "cifar10", "root": "unused"}, "checkpoint": entry}
    out = tmp_path / "results/models/score_sde_small.pt"
    assert main(["convert-checkpoint", "--spec", json.dumps(spec), "--checkpoint", str(ckpt), "--out", str(out)]) == 0

    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["config"]["network"] == SMALL_VE and saved["data_shape"] == [3, 32, 32]
    assert saved["info"] == {"checkpoint": entry["name"], "url": entry["url"], "layout": "score_sde_dict",
                             "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    rebuilt = build_score_sde_network(saved["config"]["network"])
    rebuilt.load_state_dict(saved["state_dict"], strict=True)
    state = rebuilt.state_dict()
    assert all(torch.equal(state[k], s) for k, s in zip(ema_parameter_names(rebuilt), shadow, strict=True))
    assert torch.equal(state["all_modules.0.W"], source.all_modules[0].W)


@pytest.mark.parametrize("family", ["score_sde_ve", "score_sde_vp"])
def test_load_model_rebuilds_a_converted_score_sde_network_through_the_factory(tmp_path, family):
    network = {k: v for k, v in SMALL_VE.items() if k not in ("image_size", "num_channels", "sigma_min",
                                                              "sigma_max", "num_scales")}
    schedule = {"name": "ve", "sigma_min": 0.02, "sigma_max": 100.0}
    if family == "score_sde_vp":
        network = {**network, "centered": True, "scale_by_sigma": False, "embedding_type": "positional"}
        schedule = {"name": "vp_sde", "beta_min": 0.1, "beta_max": 20.0}
    source = _random_net({"type": "score_sde_ncsnpp", **network}, seed=5)
    path = tmp_path / "checkpoint_9.pth"
    _official_file(path, source)
    entry = {"name": "small", "url": "file://unused", "layout": "score_sde_dict"}
    model_cfg = {"dataset": "cifar10", "family": family, "checkpoint": "small",
                 "network": {"type": "score_sde_ncsnpp", **network}, "schedule": schedule}
    out = convert_checkpoint(entry, path, model_cfg, (3, 32, 32), 255, tmp_path / "m.pt")
    net, built, _ = load_model(out)
    expected = load_score_sde_network(path, model_cfg["network"], (3, 32, 32))
    assert type(net) is type(expected)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in net.state_dict().items())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 7.0])
    assert torch.equal(net(x, t), expected(x, t))
    assert type(built).__name__ == ("VESchedule" if family == "score_sde_ve" else "VPSDE")


def test_convert_still_refuses_a_layout_without_a_loader(tmp_path):
    entry = {"name": "x", "url": "http://x", "layout": "unverified"}
    with pytest.raises(ValueError, match=r"layout 'unverified' has no loader; loadable: \[.*'score_sde_dict', 'ncsn_run_zip'\]"):
        convert_checkpoint(entry, tmp_path / "x", {"network": SMALL_VE}, (3, 32, 32), 255, tmp_path / "m.pt")


ROOT = Path(__file__).resolve().parents[1]
# The paper profile's discrete-time and sub-VP checkpoints, and the score_sde_pytorch config of each.
NEW_ENTRIES = {
    "score_sde_ve_cifar10_ncsnpp": "ve/cifar10_ncsnpp",
    "score_sde_vp_cifar10_ddpm": "vp/ddpm/cifar10",
    "score_sde_vp_cifar10_ddpm_last": "vp/ddpm/cifar10",
    "score_sde_vp_cifar10_ddpmpp": "vp/cifar10_ddpmpp",
    "score_sde_subvp_cifar10_ddpm_continuous_last": "subvp/cifar10_ddpm_continuous",
    "score_sde_subvp_cifar10_ddpmpp_continuous": "subvp/cifar10_ddpmpp_continuous",
    "score_sde_subvp_cifar10_ddpmpp_continuous_last": "subvp/cifar10_ddpmpp_continuous",
    "score_sde_subvp_cifar10_ddpmpp_deep_continuous": "subvp/cifar10_ddpmpp_deep_continuous",
    "score_sde_subvp_cifar10_ddpmpp_deep_continuous_last": "subvp/cifar10_ddpmpp_deep_continuous",
}


@functools.cache
def _paper_models() -> dict[str, dict]:
    paper = load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)
    return {m["checkpoint"]: m for m in paper["models"].values() if "checkpoint" in m}


@pytest.mark.parametrize("name", sorted(NEW_ENTRIES))
def test_each_new_entry_is_its_configs_manifest_and_its_network_the_manifests(name):
    entry = get_checkpoint(name)
    manifest = json.loads((MANIFESTS / f"{entry.architecture}.json").read_text())
    assert (entry.layout, NEW_ENTRIES[name] in manifest["configs_with_this_layout"]) == ("score_sde_dict", True)
    network = _paper_models()[name]["network"]
    official = SCORE_SDE_CIFAR10[NEW_ENTRIES[name]]
    defaults = SCORE_SDE_NETWORKS[network["type"]].__init__.__kwdefaults__
    # The profile's network, over the class defaults, is the official config's, whose key layout the manifest
    # lists (tests/test_nets_score_sde.py checks each config's layout against it).
    assert network["type"] == official["type"]
    def plain(kwargs: dict) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}

    assert plain({**defaults, **network}) == plain({**defaults, **official["kwargs"], "type": network["type"]})


@pytest.mark.parametrize("name", sorted(NEW_ENTRIES))
def test_each_new_entry_fetches_converts_and_loads_strictly_into_its_family(served, tmp_path, name):
    """A random-weight file of the entry's network (at a small width) in score_sde's layout, served over HTTP,
    through fetch-checkpoint, convert-checkpoint and load_model, then read by the model's family."""
    folder, base = served
    model = _paper_models()[name]
    small = {**model["network"], "nf": 32 if model["network"]["type"] == "score_sde_ddpm" else 16,
             "ch_mult": [1, 2], "num_res_blocks": 1}
    shadow = _official_file(folder / "checkpoint_8.pth", _random_net(small, seed=7), step=8)
    entry = {**vars(get_checkpoint(name)), "url": f"{base}/checkpoint_8.pth", "hash_type": "md5",
             "hash": hashlib.md5((folder / "checkpoint_8.pth").read_bytes()).hexdigest()}
    ckpt = tmp_path / "checkpoint.pth"
    assert main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}),
                 "--lock", str(tmp_path / "lock.json"), "--out", str(ckpt)]) == 0
    model_cfg = {**model, "network": small}
    spec = {"model": model_cfg, "dataset": {"kind": "cifar10", "root": "unused"}, "checkpoint": entry}
    out = tmp_path / "model.pt"
    assert main(["convert-checkpoint", "--spec", json.dumps(spec), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    net, schedule, saved = load_model(out)
    state = net.state_dict()
    trainable = ema_parameter_names(build_score_sde_network(small))
    assert all(torch.equal(state[k], s) for k, s in zip(trainable, shadow, strict=True))
    denoiser = make_denoiser(model["family"], net, schedule, tuple(saved["data_shape"]))
    assert denoiser.nfe == 0
