"""Class labels in EDM's conditional networks: one-hot rows through EDMPrecond into SongUNet / DhariwalUNet."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.nets.dhariwal_unet import DhariwalUNet
from bench.nets.edm_networks import build_edm_network
from bench.nets.edm_precond import EDMPrecond
from bench.nets.song_unet import SongUNet

torch.set_num_threads(1)

MANIFEST_DIR = Path(__file__).parent / "manifests"
COND_SONGUNETS = ["edm_songunet_ddpmpp_cifar10_cond", "edm_songunet_ncsnpp_cifar10_cond"]


def randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit fan-in scale: the zero-initialised output conv would hide every label effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            scale = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return net.eval()


@pytest.fixture(scope="module", params=COND_SONGUNETS)
def cond_net(request):
    manifest = json.loads((MANIFEST_DIR / f"{request.param}.json").read_text())
    net = build_edm_network(manifest["constructor_kwargs"])
    official = [(key, shape) for key, shape, _ in manifest["state_dict"]]
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == official
    return randomise(net, 1)


def small_dhariwal(**overrides) -> DhariwalUNet:
    kwargs = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=10, model_channels=64,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    torch.manual_seed(0)
    return DhariwalUNet(**{**kwargs, **overrides}).eval()


def small_dhariwal_precond() -> EDMPrecond:
    return randomise(EDMPrecond(small_dhariwal(), 8, 3, label_dim=10), 2)


def inputs(net: EDMPrecond, n: int = 3):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, net.img_resolution, net.img_resolution, generator=generator)
    return x, torch.tensor([0.05, 1.0, 20.0])[:n]


def one_hot(classes: list[int], dim: int = 10) -> torch.Tensor:
    return F.one_hot(torch.tensor(classes), dim).float()


def check_label_behaviour(net: EDMPrecond) -> None:
    x, sigma = inputs(net)
    with torch.no_grad():
        d = net(x, sigma, one_hot([1, 4, 9]))
        again = net(x, sigma, one_hot([1, 4, 9]))
        other = net(x, sigma, one_hot([1, 7, 9]))
        none = net(x, sigma)
        zeros = net(x, sigma, torch.zeros(3, 10))
    assert torch.equal(d, again)
    # A label acts on its own sample only.
    assert not torch.allclose(d[1], other[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(d[[0, 2]], other[[0, 2]], rtol=0, atol=1e-6)
    # EDM training/networks.py L657: no labels means a zero label row.
    torch.testing.assert_close(none, zeros, rtol=0, atol=1e-6)


def test_songunet_label_changes_its_sample_and_the_same_label_repeats(cond_net):
    check_label_behaviour(cond_net)


def test_dhariwal_label_changes_its_sample_and_the_same_label_repeats():
    check_label_behaviour(small_dhariwal_precond())


def small_songunet(**overrides) -> SongUNet:
    kwargs = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=10, model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    torch.manual_seed(0)
    return SongUNet(**{**kwargs, **overrides}).eval()


def test_songunet_scales_the_one_hot_by_sqrt_label_dim_before_map_layer0():
    """EDM training/networks.py L323-332: emb = [sin, cos] + map_label(y * sqrt(label_dim)), then
    silu(map_layer0), silu(map_layer1); with identity layers that is silu(silu(emb))."""
    net = small_songunet()
    with torch.no_grad():
        net.map_layer0.weight.copy_(torch.eye(64, 16))
        net.map_layer0.bias.zero_()
        net.map_layer1.weight.copy_(torch.eye(64))
        net.map_layer1.bias.zero_()
        t, labels = torch.tensor([0.3, -1.1]), one_hot([2, 6])
        emb = net.embed(t, labels)
        angles = t[:, None] * torch.tensor([10000.0 ** (-i / 7) for i in range(8)])
        label_term = (labels * math.sqrt(10)) @ net.map_label.weight.T + net.map_label.bias
        expected = F.silu(F.silu(torch.cat([angles.sin(), angles.cos()], dim=1) + label_term))
    torch.testing.assert_close(emb[:, :16], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", ["song", "dhariwal"])
def test_label_dropout_acts_in_training_only(backbone):
    """EDM training/networks.py L326-327 / L444-445: label_dropout zeroes labels only when training."""
    if backbone == "song":
        net = small_songunet(label_dropout=1.0)
    else:
        net = randomise(small_dhariwal(label_dropout=1.0), 4)
    t, labels = torch.tensor([0.3, -1.1]), one_hot([2, 6])
    with torch.no_grad():
        assert not torch.allclose(net.embed(t, labels), net.embed(t, torch.zeros(2, 10)))
        net.train()
        torch.testing.assert_close(net.embed(t, labels), net.embed(t, torch.zeros(2, 10)), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("labels", "shape"),
    [
        (torch.arange(3), "[3]"),  # class indices instead of one-hot rows
        (torch.arange(10) % 3, "[10]"),  # indices whose count equals label_dim: EDM would broadcast one row
        (torch.zeros(2, 10), "[2, 10]"),  # rows for another batch size
        (torch.zeros(3, 5), "[3, 5]"),  # another label_dim
    ],
)
def test_labels_that_are_not_one_hot_rows_of_the_batch_are_refused(labels, shape):
    net = small_dhariwal_precond()
    x, sigma = inputs(net)
    message = f"class_labels of shape {shape} for a batch of 3: expected one-hot rows [3, 10] (or [1, 10] for every sample)"
    with pytest.raises(ValueError, match=re.escape(message)):
        net(x, sigma, labels)


def test_one_label_row_is_shared_by_the_batch():
    net = small_dhariwal_precond()
    x, sigma = inputs(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x, sigma, one_hot([4])), net(x, sigma, one_hot([4, 4, 4])), rtol=0, atol=1e-6)
