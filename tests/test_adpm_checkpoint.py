"""Analytic-DPM's own CIFAR-10 checkpoints (LS / CS): their file layout, their network and the conversion.

Facts (baofff/Analytic-DPM @19cc628f, cifar_imagenet_codes/):
- interface/utils/ckpt.py: CKPT.save is ``torch.save(self.__dict__)``, a dict {it, best_val_loss,
  models_states, optimizers_states, lr_schedulers_states, ema_models_states}; interface/runner/fit.py
  writes it every n_its // n_ckpts iterations as ``<it>.ckpt.pth`` with the EMA models' states.
- core/utils/managers.py: models_states / ema_models_states map model names to ``state_dict()`` of the
  bare modules ('eps_model' in profiles/ddpm/cifar10/train.py); nn.DataParallel wraps another reference
  (criterions/ddpm.py, evaluators/ddpm_evaluator.py), so no 'module.' prefix.
- interface/runner/runner.py run_evaluate_profile: with profile 'ema' (True in every CIFAR-10 evaluation
  profile) it loads ema_models_states into the models with load_state_dict.
- profiles/ddpm/cifar10/base.py: UNetModel(in 3, model_channels 128, out_channels 3, num_res_blocks 3,
  attention_resolutions (2, 4), dropout 0.3, channel_mult (1, 2, 2, 2), num_heads 4, use_scale_shift_norm);
  core/modules/unet.py is improved-diffusion's class.
- criterions/ddpm.py, core/inference/utils.py (shift1 False): the network gets n * 1000 / N for the
  1-based chain index n; N = 1000, so n = t + 1 for our 0-based t.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from bench.checkpoints.convert import LOADABLE_LAYOUTS, convert_checkpoint
from bench.checkpoints.download import DownloadError
from bench.checkpoints.layouts import (
    CheckpointLoadError,
    StateDictMismatch,
    load_analytic_dpm_checkpoint,
    load_ddim_list_checkpoint,
    load_plain_state_dict,
    load_strict,
)
from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.cli import main
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.nets.adm_unet import ADMUNet

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "adpm_cifar10.json").read_text())
TINY = dict(in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=[2],
            channel_mult=[1, 2], num_heads=4, use_scale_shift_norm=True)


def _random(shapes: list[tuple[str, list[int]]], seed: int) -> OrderedDict:
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((key, torch.randn(shape, generator=gen)) for key, shape in shapes)


def _optimizer_state() -> dict:
    """A genuine AdamW state_dict (the training profile's optimizer 'all'), of a stand-in module."""
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-4, weight_decay=0.0)
    layer(torch.ones(1, 2)).sum().backward()
    opt.step()
    return opt.state_dict()


def adpm_ckpt(raw: OrderedDict, ema: OrderedDict, it: int = 400000) -> dict:
    """CKPT(it, best_val_loss, ema_models_states).from_criterion(criterion).__dict__, as fit.py saves it."""
    return {
        "it": it,
        "best_val_loss": float("inf"),  # no validation set (dataset use_val False): never updated
        "models_states": {"eps_model": raw},
        "optimizers_states": {"all": _optimizer_state()},
        "lr_schedulers_states": {},
        "ema_models_states": {"eps_model": ema},
    }


def _tiny_states():
    shapes = [(k, list(v.shape)) for k, v in ADMUNet(**TINY).state_dict().items()]
    return _random(shapes, 0), _random(shapes, 1)


def test_the_ema_weights_are_read_and_load_strictly(tmp_path):
    raw, ema = _tiny_states()
    path = tmp_path / "400000.ckpt.pth"
    torch.save(adpm_ckpt(raw, ema), path)
    loaded = load_analytic_dpm_checkpoint(path)
    assert list(loaded) == list(ema) and all(torch.equal(loaded[k], v) for k, v in ema.items())
    trained = load_analytic_dpm_checkpoint(path, use_ema=False)
    assert all(torch.equal(trained[k], v) for k, v in raw.items())
    net = ADMUNet(**TINY)
    load_strict(net, loaded)
    assert torch.equal(net.out[2].weight, ema["out.2.weight"])


def test_an_iddpm_six_channel_state_does_not_fit_the_eps_only_network(tmp_path):
    raw, ema = _tiny_states()
    ema["out.2.weight"] = torch.zeros(6, 32, 3, 3)
    ema["out.2.bias"] = torch.zeros(6)
    path = tmp_path / "160000.ckpt.pth"
    torch.save(adpm_ckpt(raw, ema, 160000), path)
    with pytest.raises(StateDictMismatch, match=r"out\.2\.weight: checkpoint \[6, 32, 3, 3\] vs model \[3, 32, 3, 3\]"):
        load_strict(ADMUNet(**TINY), load_analytic_dpm_checkpoint(path))


def test_wrong_structures_are_named(tmp_path):
    raw, ema = _tiny_states()
    path = tmp_path / "x.ckpt.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointLoadError, match=r"Analytic-DPM's checkpoint dict with keys \['it', .*found \['in"):
        load_analytic_dpm_checkpoint(path)
    torch.save([raw], path)
    with pytest.raises(CheckpointLoadError, match="found list"):
        load_analytic_dpm_checkpoint(path)
    no_ema = adpm_ckpt(raw, ema)
    no_ema["ema_models_states"] = None  # CKPT(ema_models_states=None) when training had no EMA
    torch.save(no_ema, path)
    with pytest.raises(CheckpointLoadError, match=r"'ema_models_states' is NoneType.*pass use_ema=False"):
        load_analytic_dpm_checkpoint(path)
    other = adpm_ckpt(raw, ema)
    other["ema_models_states"] = {"d_model": ema}
    torch.save(other, path)
    with pytest.raises(CheckpointLoadError, match=r"has no model 'eps_model'; it names \['d_model'\]"):
        load_analytic_dpm_checkpoint(path)
    # and the other loaders refuse this layout rather than misreading it
    torch.save(adpm_ckpt(raw, ema), path)
    with pytest.raises(CheckpointLoadError, match="should map names to tensors"):
        load_plain_state_dict(path)
    with pytest.raises(CheckpointLoadError, match="should hold a list"):
        load_ddim_list_checkpoint(path)


def test_the_manifest_is_iddpms_cifar_unet_with_an_eps_only_head():
    iddpm = json.loads((Path(__file__).parent / "manifests" / "iddpm_cifar10.json").read_text())
    assert MANIFEST["constructor_kwargs"] == {**iddpm["constructor_kwargs"], "out_channels": 3}
    differ = [(a, b) for a, b in zip(MANIFEST["state_dict"], iddpm["state_dict"], strict=True) if a != b]
    assert differ == [(["out.2.weight", [3, 128, 3, 3], "float32"], ["out.2.weight", [6, 128, 3, 3], "float32"]),
                      (["out.2.bias", [3], "float32"], ["out.2.bias", [6], "float32"])]
    net = ADMUNet(**MANIFEST["constructor_kwargs"])
    assert [[k, list(v.shape), "float32"] for k, v in net.state_dict().items()] == MANIFEST["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == MANIFEST["param_count"] == 52_542_979


def test_registry_and_paper_profile_use_the_layout():
    assert "analytic_dpm_ckpt" in LOADABLE_LAYOUTS
    cfg = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
    for run, schedule in (("ls", "linear"), ("cs", "cosine")):
        entry = get_checkpoint(f"analytic_dpm_cifar10_{run}")
        assert (entry.layout, entry.architecture) == ("analytic_dpm_ckpt", "adpm_cifar10")
        model = cfg["models"][f"adpm_cifar10_{run}"]
        assert model["checkpoint"] == entry.name and model["schedule"] == {"name": schedule, "T": 1000}
        network = {k: v for k, v in model["network"].items() if k not in ("type", "time_offset")}
        assert network == {k: v for k, v in MANIFEST["constructor_kwargs"].items()
                           if k not in ("in_channels", "num_classes", "use_checkpoint", "num_heads_upsample")}
        assert (model["family"], model["network"]["time_offset"]) == ("ddpm", 1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The full-size LS run in its official layout, placed by hand, pinned and converted to our model format."""
    tmp = tmp_path_factory.mktemp("adpm")
    shapes = [(k, shape) for k, shape, _ in MANIFEST["state_dict"]]
    # std 0.05 keeps the activations of 52M random weights finite (N(0, 1) weights overflow float32)
    raw, ema = _random(shapes, 2), OrderedDict((k, 0.05 * v) for k, v in _random(shapes, 3).items())
    entry = dataclasses.asdict(get_checkpoint("analytic_dpm_cifar10_ls"))
    ckpt = tmp / "resources/checkpoints/analytic_dpm_cifar10_ls.ckpt"
    ckpt.parent.mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"place the file at .*analytic_dpm_cifar10_ls\.ckpt \(registry note: .*"
                                            r"place the LS run's 400000\.ckpt\.pth itself at the cache path"):
        main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(tmp / "l.json"),
              "--out", str(ckpt)])
    torch.save(adpm_ckpt(raw, ema), ckpt)
    lock = tmp / "resources/checkpoints/analytic_dpm_cifar10_ls.lock.json"
    assert main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(lock),
                 "--out", str(ckpt)]) == 0
    assert json.loads(lock.read_text()) == {entry["url"]: hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    model_cfg = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())["models"]["adpm_cifar10_ls"]
    spec = {"model": model_cfg, "dataset": {"kind": "cifar10", "root": "unused"}, "checkpoint": entry}
    out = tmp / "results/models/adpm_cifar10_ls.pt"
    assert main(["convert-checkpoint", "--spec", json.dumps(spec), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return out, ckpt, entry, ema


def test_conversion_keeps_the_ema_weights_and_the_provenance(converted):
    out, ckpt, entry, ema = converted
    net, schedule, saved = load_model(out)
    assert (schedule.T, saved["data_shape"], saved["max_level"]) == (1000, [3, 32, 32], 255)
    assert saved["info"] == {"checkpoint": "analytic_dpm_cifar10_ls", "url": entry["url"],
                             "layout": "analytic_dpm_ckpt", "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    state = net.state_dict()
    assert list(state) == list(ema) and all(torch.equal(state[k], v) for k, v in ema.items())


def test_the_converted_network_is_fed_the_one_based_index(converted):
    out, _, _, ema = converted
    net, schedule, _ = load_model(out)
    reference = ADMUNet(**MANIFEST["constructor_kwargs"]).eval()  # time_offset 0: fed n itself, as the official code
    load_strict(reference, ema)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    denoiser = DiscreteEpsDenoiser(net, schedule)
    t = 0  # our first step is Analytic-DPM's n = 1
    with torch.inference_mode():
        eps = denoiser(x, t).eps
        want = reference(x.float(), torch.tensor([float(t + 1)])).double()
        off_by_one = reference(x.float(), torch.tensor([float(t)])).double()
    assert torch.allclose(eps, want, rtol=0, atol=1e-5)
    assert not torch.allclose(eps, off_by_one, rtol=0, atol=1e-3)
    assert denoiser.nfe == 1


def test_convert_checkpoint_refuses_the_unverified_extended_files(tmp_path):
    entry = dataclasses.asdict(get_checkpoint("analytic_dpm_ext_cifar10_ls"))
    assert entry["layout"] == "unverified"
    model_cfg = copy.deepcopy(
        yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())["models"]["adpm_cifar10_ls"])
    with pytest.raises(ValueError, match="layout 'unverified' has no loader"):
        convert_checkpoint(entry, tmp_path / "x.ckpt", model_cfg, (3, 32, 32), 255, tmp_path / "m.pt")
