"""DhariwalUNet: official state_dict layout (manifest) and the ADM conditioning path."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.nets.dhariwal_unet import DhariwalUNet
from bench.nets.edm_layers import PositionalEmbedding, UNetBlock
from bench.nets.edm_networks import build_edm_network
from bench.nets.edm_precond import EDMPrecond

torch.set_num_threads(1)

MANIFEST = json.loads(
    (Path(__file__).parent / "manifests" / "edm_dhariwal_imagenet64.json").read_text()
)


@pytest.fixture(scope="module")
def full_net():
    # On the meta device: layout without allocating and initialising 296M weights.
    with torch.device("meta"):
        return build_edm_network(MANIFEST["constructor_kwargs"])


def test_state_dict_keys_order_shapes_and_dtypes_match_manifest(full_net):
    ours = [
        [key, list(t.shape), str(t.dtype).removeprefix("torch.")]
        for key, t in full_net.state_dict().items()
    ]
    assert len(ours) == MANIFEST["num_state_dict_entries"]
    assert ours == MANIFEST["state_dict"]


def test_param_count_and_buffer_keys_match_manifest(full_net):
    assert sum(p.numel() for p in full_net.parameters()) == MANIFEST["param_count"]
    assert [name for name, _ in full_net.named_buffers()] == MANIFEST["buffer_keys"]
    assert sum(b.numel() for b in full_net.buffers()) == MANIFEST["buffer_numel"]


def test_manifest_network_is_edm_precond_with_adm_settings(full_net):
    assert isinstance(full_net, EDMPrecond) and isinstance(full_net.model, DhariwalUNet)
    assert full_net.use_fp16 and full_net.label_dim == 1000
    blocks = {name: b for name, b in full_net.model.named_modules() if isinstance(b, UNetBlock)}
    heads = {name: b.num_heads for name, b in blocks.items() if b.num_heads}
    # Attention (heads = C/64) in every block at 32, 16 and 8, plus dec.8x8_in0; none at 64.
    assert heads["enc.32x32_block0"] == 384 // 64 and heads["dec.8x8_block3"] == 768 // 64
    assert "dec.8x8_in0" in heads and "dec.8x8_in1" not in heads
    assert not any(name.split(".")[1].startswith("64x64") for name in heads)
    assert len(heads) == 3 * 3 + 3 * 4 + 1
    assert all(b.adaptive_scale and b.skip_scale == 1 for b in blocks.values())
    assert all(b.norm0.eps == 1e-5 and b.norm0.num_groups == 32 for b in blocks.values())
    # Weightless resampling skips: a filter but no weight.
    assert full_net.model.enc["32x32_down"].skip.weight is None


def test_random_manifest_state_dict_loads_strictly(full_net):
    # A distinct constant per entry is enough to see every tensor land under its own key.
    state = {
        key: torch.full(shape, float(i), dtype=getattr(torch, dtype))
        for i, (key, shape, dtype) in enumerate(MANIFEST["state_dict"])
    }
    # assign=True replaces the meta tensors; key and shape checks are those of a plain load.
    result = full_net.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = full_net.state_dict()
    for key in [MANIFEST["state_dict"][0][0], MANIFEST["buffer_keys"][-1], "model.out_conv.bias"]:
        assert torch.equal(loaded[key], state[key]), key


def small_unet(label_dim: int = 10, **overrides) -> DhariwalUNet:
    kwargs = dict(
        img_resolution=8,
        in_channels=3,
        out_channels=3,
        label_dim=label_dim,
        model_channels=64,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        dropout=0.0,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    net = DhariwalUNet(**kwargs).eval()
    # The output layers start at zero; random weights make every path visible at the output.
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def test_small_forward_shapes_and_two_heads():
    net = small_unet(augment_dim=9)
    assert net.dec["4x4_block0"].num_heads == 2 and net.enc["8x8_block0"].num_heads == 0
    x = torch.randn(4, 3, 8, 8)
    labels = F.one_hot(torch.arange(4), 10).float()
    out = net(x, torch.linspace(-1, 1, 4), labels, augment_labels=torch.randn(4, 9))
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_embedding_is_cos_sin_mlp_then_unscaled_label():
    net = small_unet()
    noise = torch.tensor([-0.7, 0.0, 1.3])
    labels = F.one_hot(torch.tensor([0, 3, 9]), 10).float()
    half = 32
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)  # endpoint=False
    angles = noise.double()[:, None] * freqs[None]
    pos = torch.cat([angles.cos(), angles.sin()], dim=1).float()
    hidden = F.silu(net.map_layer0(pos))
    expected = F.silu(net.map_layer1(hidden) + labels @ net.map_label.weight.T)
    assert isinstance(net.map_noise, PositionalEmbedding) and not net.map_noise.endpoint
    assert torch.allclose(net.embed(noise, labels), expected, atol=1e-5)


def test_class_labels_change_the_output():
    net = small_unet()
    x, noise = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.3])
    cat = net(x, noise, F.one_hot(torch.tensor([1, 1]), 10).float())
    dog = net(x, noise, F.one_hot(torch.tensor([7, 7]), 10).float())
    none = net(x, noise, torch.zeros(2, 10))
    assert (cat - dog).abs().max() > 1e-3 and (cat - none).abs().max() > 1e-3


def test_conditional_net_without_labels_is_refused():
    with pytest.raises(ValueError, match=r"class-conditional \(label_dim=10\)"):
        small_unet()(torch.randn(1, 3, 8, 8), torch.zeros(1), None)


def test_unconditional_net_has_no_label_map_and_ignores_labels():
    net = small_unet(label_dim=0)
    assert net.map_label is None
    x, noise = torch.randn(1, 3, 8, 8), torch.zeros(1)
    assert torch.equal(net(x, noise, None), net(x, noise, torch.ones(1, 10)))


def test_label_dropout_zeroes_labels_only_in_training():
    net = small_unet(label_dropout=1.0)
    noise, labels = torch.zeros(2), F.one_hot(torch.tensor([2, 5]), 10).float()
    net.train()
    assert torch.allclose(net.embed(noise, labels), net.embed(noise, torch.zeros(2, 10)))
    net.eval()
    assert not torch.allclose(net.embed(noise, labels), net.embed(noise, torch.zeros(2, 10)))


def test_bad_geometry_is_refused_with_the_values():
    with pytest.raises(ValueError, match=r"img_resolution=6 must be divisible by .* = 4"):
        DhariwalUNet(6, 3, 3, model_channels=64, channel_mult=[1, 2, 2], attn_resolutions=[])
    with pytest.raises(ValueError, match=r"out_channels=32 divisible into num_heads=0"):
        DhariwalUNet(8, 3, 3, model_channels=32, channel_mult=[1], attn_resolutions=[8])


def test_zero_init_output_layer_gives_zero_output():
    """ADM init: out_conv starts at zero, so the untrained U-Net outputs exactly 0."""
    torch.manual_seed(0)
    net = DhariwalUNet(8, 3, 3, model_channels=64, channel_mult=[1, 2], num_blocks=1,
                       attn_resolutions=[4])
    out = net(torch.randn(2, 3, 8, 8), torch.zeros(2), None)
    assert torch.count_nonzero(out) == 0
    assert net.map_layer0.weight.std().item() == pytest.approx(math.sqrt(1 / (3 * 64)), rel=0.1)
