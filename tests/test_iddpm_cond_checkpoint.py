"""iDDPM's class-conditional ImageNet-64 model (imagenet64_cond_270M_250K.pt): its chain feeds the network the step
index (--rescale_timesteps False), its config is the manifest's constructor, and a file in the official layout loads
strictly through the fetch and convert steps."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml
from served_checkpoint import fetch_and_convert

from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.families import build_schedule, check_model, make_denoiser
from bench.methods.iddpm_chain import IDDPMChain, network_time_scale
from bench.nets.factory import build_network

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "iddpm_imagenet64_cond.json").read_text())
torch.set_num_threads(1)


class _RecordTime(torch.nn.Module):
    """A [eps, v] network that records the time and labels it is called with."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((t.clone(), y.clone()))
        return torch.cat([x, x], dim=1) * self.scale


@pytest.mark.parametrize(("rescale", "seen"), [({}, 3001 * 1000 / 4000), ({"rescale_timesteps": False}, 3001.0)])
def test_the_chain_feeds_the_network_the_time_it_was_trained_on(rescale, seen):
    schedule = build_schedule({"name": "cosine", "T": 4000, **rescale})
    assert network_time_scale(schedule) == seen / 3001
    net = _RecordTime()
    denoiser = make_denoiser("iddpm", net, schedule, (1, 2, 2))
    denoiser.class_labels = torch.tensor([2, 0])
    denoiser(torch.randn(2, 1, 2, 2), 3001)
    t, y = net.calls[-1]
    assert t.tolist() == [seen, seen] and y.tolist() == [2, 0]


def test_rescale_timesteps_is_refused_outside_the_iddpm_family():
    model = {"dataset": "imagenet64", "family": "ddpm", "network": {"type": "adm_unet"},
             "schedule": {"name": "cosine", "T": 1000, "rescale_timesteps": False}}
    with pytest.raises(ValueError, match=r"'models.m.schedule.rescale_timesteps': family 'ddpm' does not take it; "
                                         r"allowed for families \['iddpm'\]"):
        check_model("m", model)


def test_the_profiles_network_is_the_manifests_constructor():
    paper = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text(encoding="utf-8"))
    network = paper["models"]["iddpm_imagenet64_cond"]["network"]
    official = {k: v for k, v in MANIFEST["constructor_kwargs"].items()
                if k not in ("in_channels", "use_checkpoint", "num_heads_upsample")}
    assert {k: v for k, v in network.items() if k != "type"} == official
    assert MANIFEST["diffusion"]["rescale_timesteps"] is False
    assert get_checkpoint("iddpm_imagenet64_cond").architecture == "iddpm_imagenet64_cond"


def test_an_official_layout_file_is_fetched_converted_and_sampled_with_its_labels(served, tmp_path):
    folder, _ = served
    # The manifest's architecture at a small width and depth: label_emb and every other key kind stay.
    network = {"type": "adm_unet", **{k: v for k, v in MANIFEST["constructor_kwargs"].items() if k != "in_channels"},
               "model_channels": 32, "num_res_blocks": 1}
    net = build_network(network, channels=3, image_size=64)
    gen = torch.Generator().manual_seed(0)
    state = OrderedDict((k, torch.randn(v.shape, generator=gen) * 0.05) for k, v in net.state_dict().items())
    assert list(state)[4] == "label_emb.weight" and state["label_emb.weight"].shape == (1000, 128)
    torch.save(state, folder / "imagenet64_cond_270M_250K.pt")
    model_cfg = {"dataset": "imagenet64", "family": "iddpm", "checkpoint": "iddpm_imagenet64_cond", "label_dim": 1000,
                 "network": network, "schedule": {"name": "cosine", "T": 4000, "rescale_timesteps": False}}
    _, out = fetch_and_convert(served, tmp_path, "iddpm_imagenet64_cond", "imagenet64_cond_270M_250K.pt", model_cfg,
                               {"kind": "imagenet64", "root": "unused"})

    loaded, schedule, _ = load_model(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert isinstance(schedule, IDDPMChain) and not schedule.rescale_timesteps
    denoiser = make_denoiser("iddpm", loaded, schedule, (3, 64, 64))
    y = torch.tensor([7, 993])
    denoiser.class_labels = y
    x = torch.randn(2, 3, 64, 64, generator=gen)
    net.load_state_dict(state)
    with torch.no_grad():
        # --rescale_timesteps False: the network sees step 1234 itself, with each row's class index.
        want = net.eval()(x, torch.full((2,), 1234.0), y)
        pred = denoiser(x, 1234)
    assert torch.allclose(pred.eps, want[:, :3], atol=1e-6) and torch.allclose(pred.v, want[:, 3:], atol=1e-6)
