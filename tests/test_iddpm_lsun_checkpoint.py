"""iDDPM's LSUN Bedroom model (lsun_uncond_100M_1200K_bs128.pt, Analytic-DPM Table 3's Improved DDPM there): its
config is the manifest's constructor with the README's diffusion flags, and a file in the official layout loads
strictly through the fetch and convert steps and runs iDDPM's respaced sampler on the original chain's indices."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from served_checkpoint import fetch_and_convert

from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.core.time_grids import respaced_grid
from bench.families import make_denoiser
from bench.methods.iddpm_chain import IDDPMChain
from bench.nets.factory import build_network

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "iddpm_lsun_bedroom.json").read_text())
torch.set_num_threads(1)


def _paper() -> dict:
    return yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text(encoding="utf-8"))


def test_the_registry_entry_is_the_readmes_lr_1e4_file():
    entry = get_checkpoint("iddpm_lsun_bedroom")
    assert entry.url == "https://openaipublic.blob.core.windows.net/diffusion/march-2021/lsun_uncond_100M_1200K_bs128.pt"
    assert (entry.layout, entry.architecture) == ("plain_state_dict", "iddpm_lsun_bedroom")


def test_the_profiles_model_is_the_manifests_constructor_and_the_readmes_chain():
    model = _paper()["models"]["iddpm_lsun_bedroom"]
    official = {k: v for k, v in MANIFEST["constructor_kwargs"].items()
                if k not in ("in_channels", "use_checkpoint", "num_heads_upsample", "num_classes")}
    assert {k: v for k, v in model["network"].items() if k != "type"} == official
    # --diffusion_steps 1000 --noise_schedule linear --rescale_timesteps False
    diffusion = MANIFEST["diffusion"]
    assert model["schedule"] == {"name": diffusion["noise_schedule"], "T": diffusion["steps"],
                                 "rescale_timesteps": diffusion["rescale_timesteps"]}
    assert (model["family"], model["dataset"]) == ("iddpm", "lsun_bedroom")
    # 113.68M float32 parameters: Analytic-DPM Table 4's 433.64 MB for Improved DDPM on LSUN Bedroom.
    assert round(MANIFEST["param_count"] * 4 / 2**20, 1) == 433.6


def test_an_official_layout_file_is_fetched_converted_and_read_at_the_original_index(served, tmp_path):
    folder, _ = served
    # The manifest's architecture at a small width and depth: every level, the one 16x16 attention level with
    # its single head and the scale-shift-free ResBlocks stay.
    network = {"type": "adm_unet", **{k: v for k, v in MANIFEST["constructor_kwargs"].items() if k != "in_channels"},
               "model_channels": 32, "num_res_blocks": 1}
    net = build_network(network, channels=3, image_size=256)
    gen = torch.Generator().manual_seed(0)
    state = OrderedDict((k, torch.randn(v.shape, generator=gen) * 0.05) for k, v in net.state_dict().items())
    torch.save(state, folder / "lsun_uncond_100M_1200K_bs128.pt")
    model_cfg = {**_paper()["models"]["iddpm_lsun_bedroom"], "network": network}
    _, out = fetch_and_convert(served, tmp_path, "iddpm_lsun_bedroom", "lsun_uncond_100M_1200K_bs128.pt", model_cfg,
                               {"kind": "lsun", "root": "unused", "category": "bedroom"})

    loaded, schedule, _ = load_model(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert isinstance(schedule, IDDPMChain) and not schedule.rescale_timesteps
    denoiser = make_denoiser("iddpm", loaded, schedule, (3, 256, 256))
    # --timestep_respacing 90 keeps original indices; the network sees such an index itself (no 1000 / T scaling).
    t = int(respaced_grid(1000, 90)[45])
    x = torch.randn(1, 3, 256, 256, generator=gen)
    net.load_state_dict(state)
    with torch.no_grad():
        want = net.eval()(x, torch.full((1,), float(t)))
        pred = denoiser(x, t)
    assert torch.allclose(pred.eps, want[:, :3], atol=1e-6) and torch.allclose(pred.v, want[:, 3:], atol=1e-6)
