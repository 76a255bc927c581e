"""EDM's converted ADM baseline (baseline-imagenet-64x64-cond-adm.pkl): iDDPMPrecond against its closed forms,
the DhariwalUNet manifest with 6 output channels, and a pickle in the official layout fetched over HTTP."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from edm_pickle_fixtures import dumps_official, official_stand_ins, persistent
from served_checkpoint import fetch_and_convert
from torch import nn

from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.core.labels import one_hot
from bench.families import make_denoiser
from bench.nets.dhariwal_unet import DhariwalUNet
from bench.nets.edm_adm_backbone import EDMAdmBackbone
from bench.nets.edm_networks import build_edm_network
from bench.nets.edm_precond import iDDPMPrecond

torch.set_num_threads(1)
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "edm_dhariwal_imagenet64_baseline.json").read_text())


def official_u(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> torch.Tensor:
    """networks.py L594-596 written out: a float32 recursion from u_M = 0, one scalar step j at a time."""

    def alpha_bar(j: int) -> torch.Tensor:
        return (0.5 * math.pi * torch.as_tensor(j) / M / (C_2 + 1)).sin() ** 2

    u = torch.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


def test_the_u_grid_is_the_official_recursion_bit_for_bit():
    net = iDDPMPrecond(torch.nn.Identity(), 64, 3)
    assert net.u.dtype == torch.float32 and torch.equal(net.u, official_u())
    # u_j^2 = 1 / alpha_bar'(M - j) - 1 with alpha_bar' the product of the clipped ratios (iDDPM's clipped betas):
    # where no ratio is clipped (j >= 1) that is sqrt(alpha_bar(M) / alpha_bar(j) - 1), up to the float32 recursion's
    # cancellation near u = 0.
    abar = [math.sin(0.5 * math.pi * j / 1000 / 1.008) ** 2 for j in range(1001)]
    for j in (1, 100, 500, 900):
        assert float(net.u[j]) == pytest.approx(math.sqrt(abar[1000] / abar[j] - 1), rel=1e-4)
    assert (net.sigma_min, net.sigma_max) == (float(net.u[999]), float(net.u[0]))


def test_round_sigma_takes_the_nearest_level_and_c_noise_is_m_minus_1_minus_its_index():
    net = iDDPMPrecond(torch.nn.Identity(), 64, 3)
    u = net.u.double()
    j = torch.tensor([0, 1, 250, 998, 999])
    # Just inside either side of the midpoint between u_j and u_{j+1}: the nearer level wins.
    mid = (u[j] + u[j + 1]) / 2
    gap = (u[j] - u[j + 1]) * 1e-3
    above, below = (mid + gap).float(), (mid - gap).float()
    assert torch.equal(net.round_sigma(above, return_index=True), j)
    assert torch.equal(net.round_sigma(below, return_index=True), j + 1)
    assert torch.equal(net.round_sigma(above), net.u[j])
    assert net.round_sigma(torch.tensor([1e9, 0.0]), return_index=True).tolist() == [0, 1000]
    # c_noise = M - 1 - j: ADM's own step index t (the network's input), 999 at u_0 and 0 at u_999.
    c = net.coefficients(net.u[j].reshape(-1, 1, 1, 1))
    assert c.c_noise.tolist() == (999 - j).tolist()
    assert torch.equal(c.c_in.flatten(), 1 / (net.u[j] ** 2 + 1).sqrt())
    assert torch.equal(c.c_out.flatten(), -net.u[j]) and torch.equal(c.c_skip, torch.ones_like(c.c_skip))


def test_the_manifest_layout_is_ours_on_the_meta_device():
    with torch.device("meta"):
        net = build_edm_network(MANIFEST["constructor_kwargs"])
    assert isinstance(net, iDDPMPrecond) and isinstance(net.model, DhariwalUNet)
    assert net.model.out_channels == 6 and net.label_dim == 1000
    ours = [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in net.state_dict().items()]
    assert ours == MANIFEST["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == MANIFEST["param_count"]
    assert [name for name, _ in net.named_buffers()] == MANIFEST["buffer_keys"]
    # The manifest holds the values one machine computed: the float32 recursion's last bits follow the CPU's
    # sin (u_0 was 20291.169921875 there, 20291.171875 on another), and the bitwise check is against the
    # official recursion run here (test_the_u_grid_is_the_official_recursion_bit_for_bit).
    assert net.sigma_min == pytest.approx(MANIFEST["sigma_min"], rel=1e-6)
    assert net.sigma_max == pytest.approx(MANIFEST["sigma_max"], rel=1e-6)


def test_the_registry_entry_names_the_baseline_manifest():
    entry = get_checkpoint("edm_baseline_imagenet64_cond_adm")
    assert entry.architecture == "edm_dhariwal_imagenet64_baseline" and entry.layout == "edm_pickle"
    assert entry.url.endswith("/" + MANIFEST["released_pickle"])


# The baseline's kwargs at a small width (32 channels for GroupNorm's 32 groups, one head of 64 at 32x32).
SMALL = {"img_resolution": 64, "img_channels": 3, "label_dim": 1000, "use_fp16": False, "model_type": "DhariwalUNet",
         "model_channels": 32, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [32]}


@persistent
class _VPLoss:
    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d, self.beta_min, self.epsilon_t = beta_d, beta_min, epsilon_t


def write_baseline_pickle(path: Path) -> iDDPMPrecond:
    """A random iDDPMPrecond(DhariwalUNet) pickled as EDM's training loop does, its kwargs recorded as the official
    constructors record them (the backbone's: what iDDPMPrecond passes on, out_channels = 2 img_channels)."""
    torch.manual_seed(0)
    net = build_edm_network({"class_name": "training.networks.iDDPMPrecond", **SMALL})
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    net._init_args, net._init_kwargs = (), copy.deepcopy(SMALL)
    backbone = {k: v for k, v in SMALL.items() if k not in ("img_channels", "use_fp16", "model_type")}
    net.model._init_args, net.model._init_kwargs = (), {**backbone, "in_channels": 3, "out_channels": 6}
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    with official_stand_ins("raise RuntimeError('module_src must never be executed')\n") as easy_dict:
        data = dict(ema=ema, loss_fn=_VPLoss(), augment_pipe=None, dataset_kwargs=easy_dict(path="imagenet.zip"))
        path.write_bytes(dumps_official(data))
    return ema


def fetch_served_baseline(served, tmp_path: Path, model_cfg: dict) -> tuple[nn.Module, Path]:
    """A random-weight baseline pickle served over HTTP, fetched and converted as ``model_cfg`` (its family, network
    and schedule; the registry entry's name is filled in) by the real CLI steps; returns the pickled network and
    the converted model file."""
    folder, _ = served
    original = write_baseline_pickle(folder / "baseline-imagenet-64x64-cond-adm.pkl")
    name = "edm_baseline_imagenet64_cond_adm"
    _, out = fetch_and_convert(served, tmp_path, name, "baseline-imagenet-64x64-cond-adm.pkl",
                               {"dataset": "imagenet64", "checkpoint": name, "label_dim": 1000, **model_cfg},
                               {"kind": "imagenet64", "root": "unused"})
    return original, out


def test_an_official_layout_pickle_is_fetched_converted_and_denoises_as_pickled(served, tmp_path):
    original, out = fetch_served_baseline(served, tmp_path, {
        "family": "edm", "network": {"type": "edm_precond"},
        "schedule": {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}})

    net, _, saved = load_model(out)
    assert isinstance(net, iDDPMPrecond) and net.model.out_channels == 6
    assert saved["config"]["network"]["class_name"] == "iDDPMPrecond" and saved["info"]["layout"] == "edm_pickle"
    loaded = net.state_dict()
    assert list(loaded) == list(original.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    sigma, labels = net.u[[40, 700]], one_hot(torch.tensor([3, 917]), 1000)
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), original(x, sigma, labels))


def test_the_adm_backbone_and_the_wrapper_are_one_network_on_the_u_grid(tmp_path):
    """iDDPMPrecond's D(x; u_j) is ADM's x0 from the eps channels at step t = M - 1 - j of x_t = x / sqrt(1 + u_j^2)
    (EDM Table 1's iDDPM column); the backbone view adds ADM's variance channels."""
    precond = write_baseline_pickle(tmp_path / "baseline.pkl")
    adm = EDMAdmBackbone(precond)
    assert adm.num_classes == 1000 and adm.out_channels == 6
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    j, y = torch.tensor([10, 900]), torch.tensor([5, 600])
    sigma = precond.u[j].reshape(-1, 1, 1, 1)
    with torch.no_grad():
        out = adm(x * (1 / (1 + sigma**2).sqrt()), (999 - j).float(), y)
        assert torch.allclose(precond(x, precond.u[j], one_hot(y, 1000)), x - sigma * out[:, :3], rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 6, 64, 64) and out[:, 3:].abs().max() > 0
    with pytest.raises(ValueError, match=r"num_classes=1000 needs class labels y \[N\]"):
        adm(x, torch.zeros(2))
    with pytest.raises(ValueError, match="needs an iDDPMPrecond pickle"):
        EDMAdmBackbone(build_edm_network({**SMALL, "class_name": "training.networks.EDMPrecond"}))


def test_the_iddpm_family_samples_the_converted_adm_as_guided_diffusion_does(served, tmp_path):
    """The pickle converted as network type edm_adm_backbone: the iddpm family's chain (cosine, T = 1000, the network
    fed the step index: guided-diffusion's rescale_timesteps False) denoises as the EDM wrapper at sigma = u_{M-1-n}."""
    original, out = fetch_served_baseline(served, tmp_path, {
        "family": "iddpm", "network": {"type": "edm_adm_backbone"},
        "schedule": {"name": "cosine", "T": 1000, "rescale_timesteps": False}})

    net, schedule, saved = load_model(out)
    assert isinstance(net, EDMAdmBackbone) and saved["config"]["network"]["type"] == "edm_adm_backbone"
    assert all(torch.equal(net.precond.state_dict()[k], v) for k, v in original.state_dict().items())
    denoiser = make_denoiser("iddpm", net, schedule, (3, 64, 64))
    y = torch.tensor([3, 417])
    denoiser.class_labels = y
    x_t = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for n in (0, 499, 999):
        abar = schedule.alpha_bars[n]
        pred = denoiser(x_t, n)
        sigma = original.u[999 - n]
        # iDDPM's float64 cosine chain and EDM's float32 u grid agree to float32 rounding.
        assert float(sigma) == pytest.approx(math.sqrt(1 / float(abar) - 1), rel=1e-3)
        with torch.no_grad():
            D = original(x_t * (1 + sigma**2).sqrt(), sigma.expand(2), one_hot(y, 1000))
        assert torch.allclose(pred.x0.float(), D, rtol=1e-3, atol=1e-3)
