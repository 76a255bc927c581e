"""score_sde_pytorch's checkpoint_N.pth -> our score-SDE networks: EMA weights, strict keys, conversion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.checkpoints.convert import convert_checkpoint
from bench.checkpoints.layouts import CheckpointLoadError, load_score_sde_checkpoint
from bench.checkpoints.model_file import load_model
from bench.checkpoints.score_sde_network import ema_parameter_names, load_score_sde_network
from bench.cli import main
from bench.nets.score_sde_configs import SCORE_SDE_CIFAR10, build_score_sde_network

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
    with pytest.raises(ValueError, match=r"layout 'unverified' has no loader; loadable: \[.*'score_sde_dict'\]"):
        convert_checkpoint(entry, tmp_path / "x", {"network": SMALL_VE}, (3, 32, 32), 255, tmp_path / "m.pt")
