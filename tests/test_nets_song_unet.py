"""SongUNet and EDM layers: official state_dict layout (manifests) and closed-form behaviour."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.nets.edm_layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    PositionalEmbedding,
    UNetBlock,
    resample_kernel,
)
from bench.nets.edm_precond import EDMPrecond, build_edm_network
from bench.nets.song_unet import SongUNet

torch.set_num_threads(1)

MANIFEST_DIR = Path(__file__).parent / "manifests"
MANIFESTS = [
    "edm_songunet_ddpmpp_cifar10",
    "edm_songunet_ddpmpp_cifar10_cond",
    "edm_songunet_ncsnpp_cifar10",
    "edm_songunet_ncsnpp_cifar10_cond",
    "edm_songunet_ddpmpp_ffhq64",
    "edm_songunet_ncsnpp_ffhq64",
    "edm_songunet_ddpmpp_afhqv2_64",
    "edm_songunet_ncsnpp_afhqv2_64",
]


@pytest.fixture(scope="module", params=MANIFESTS)
def manifest_and_net(request):
    manifest = json.loads((MANIFEST_DIR / f"{request.param}.json").read_text())
    torch.manual_seed(0)
    return manifest, build_edm_network(manifest["constructor_kwargs"])


def test_state_dict_keys_order_and_shapes_match_manifest(manifest_and_net):
    manifest, net = manifest_and_net
    ours = [
        (key, list(t.shape), str(t.dtype).removeprefix("torch."))
        for key, t in net.state_dict().items()
    ]
    official = [tuple(entry) for entry in manifest["state_dict"]]
    assert len(ours) == manifest["num_state_dict_entries"]
    assert ours == official


def test_param_count_and_buffer_keys_match_manifest(manifest_and_net):
    manifest, net = manifest_and_net
    assert sum(p.numel() for p in net.parameters()) == manifest["param_count"]
    assert [name for name, _ in net.named_buffers()] == manifest["buffer_keys"]
    assert sum(b.numel() for b in net.buffers()) == manifest["buffer_numel"]


def test_resample_filter_buffers_are_normalised_outer_products(manifest_and_net):
    manifest, net = manifest_and_net
    taps = torch.tensor(manifest["constructor_kwargs"]["resample_filter"], dtype=torch.float32)
    expected = (taps[:, None] * taps[None, :] / taps.sum() ** 2)[None, None]
    filters = {k: v for k, v in net.state_dict().items() if k.endswith("resample_filter")}
    assert filters, "every manifest has resampling convs"
    for key, value in filters.items():
        assert torch.equal(value, expected), key
        assert value.sum().item() == pytest.approx(1.0)


def test_random_manifest_state_dict_loads_strictly(manifest_and_net):
    manifest, net = manifest_and_net
    generator = torch.Generator().manual_seed(1)
    state = {
        key: torch.randn(shape, generator=generator, dtype=getattr(torch, dtype))
        for key, shape, dtype in manifest["state_dict"]
    }
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = net.state_dict()
    # Buffers must be overwritten too (the NCSN++ Fourier frequencies are per checkpoint).
    for key in [manifest["state_dict"][0][0], manifest["buffer_keys"][0]]:
        assert torch.equal(loaded[key], state[key]), key


def test_manifest_wrapper_is_edm_precond_with_songunet(manifest_and_net):
    manifest, net = manifest_and_net
    kwargs = manifest["pickled_init_kwargs_inner_model"]
    assert isinstance(net, EDMPrecond) and isinstance(net.model, SongUNet)
    assert (net.sigma_data, net.sigma_min, net.sigma_max) == (0.5, 0.0, math.inf)
    assert net.label_dim == kwargs["label_dim"] == net.model.label_dim
    assert (net.model.in_channels, net.model.out_channels) == (3, 3)


def test_pickled_wrapper_kwargs_rebuild_the_manifest_network(manifest_and_net):
    """What load_edm_network does with a released pickle: the wrapper's _init_kwargs alone rebuild the
    net, and the backbone kwargs the wrapper passes on are the pickled backbone's."""
    manifest, net = manifest_and_net
    rebuilt = build_edm_network(
        {"class_name": manifest["constructor_kwargs"]["class_name"], **manifest["pickled_init_kwargs_precond"]}
    )
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in net.state_dict().items()
    ]
    inner = manifest["pickled_init_kwargs_inner_model"]
    passed_on = {"img_resolution": rebuilt.img_resolution, "in_channels": rebuilt.img_channels,
                 "out_channels": rebuilt.model.out_channels, "label_dim": rebuilt.label_dim}
    assert {k: inner[k] for k in passed_on} == passed_on
    assert {k: v for k, v in inner.items() if k not in passed_on} == {
        k: v for k, v in manifest["pickled_init_kwargs_precond"].items()
        if k not in ("model_type", "use_fp16", "img_resolution", "img_channels", "label_dim")
    }


def small_unet(**overrides) -> SongUNet:
    kwargs = dict(
        img_resolution=8,
        in_channels=3,
        out_channels=3,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        augment_dim=9,
        dropout=0.0,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return SongUNet(**kwargs).eval()


ARCHS = {
    "ddpmpp": dict(embedding_type="positional", channel_mult_noise=1, resample_filter=[1, 1]),
    "ncsnpp": dict(
        embedding_type="fourier",
        channel_mult_noise=2,
        encoder_type="residual",
        resample_filter=[1, 3, 3, 1],
    ),
    "skip": dict(encoder_type="skip", decoder_type="skip"),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("label_dim", [0, 10])
def test_small_forward_shapes_and_conditioning(arch, label_dim):
    net = small_unet(label_dim=label_dim, **ARCHS[arch])
    # aux_conv starts at 1e-5 scale; randomise it so conditioning differences are visible.
    for name, module in net.dec.items():
        if name.endswith("aux_conv"):
            torch.nn.init.normal_(module.weight)
    x = torch.randn(2, 3, 8, 8)
    noise = torch.tensor([0.3, -1.2])
    labels = F.one_hot(torch.tensor([1, 7]), 10).float() if label_dim else None
    with torch.no_grad():
        out = net(x, noise, labels)
        out_aug = net(x, noise, labels, augment_labels=torch.randn(2, 9))
        out_noise = net(x, noise + 1, labels)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out, out_aug)
    assert not torch.allclose(out, out_noise)
    if label_dim:
        with torch.no_grad():
            out_other = net(x, noise, labels.flip(0))
        assert not torch.allclose(out, out_other)


def test_conditional_net_without_labels_raises():
    net = small_unet(label_dim=10)
    with pytest.raises(ValueError, match="label_dim=10"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1), None)


@pytest.mark.parametrize(
    ("key", "value"),
    [("embedding_type", "sinusoid"), ("encoder_type", "dense"), ("decoder_type", "residual")],
)
def test_invalid_architecture_choice_names_value_and_options(key, value):
    with pytest.raises(ValueError, match=f"{key}='{value}'.*allowed"):
        small_unet(**{key: value})


def test_small_net_has_official_decoder_attention_layout():
    net = small_unet()
    attending = [name for name, m in net.dec.items() if isinstance(m, UNetBlock) and m.num_heads]
    assert attending == ["4x4_in0", "4x4_block1"]
    assert net.dec["4x4_in0"].qkv.weight.shape == (96, 32, 1, 1)
    assert list(net.dec)[-2:] == ["8x8_aux_norm", "8x8_aux_conv"]


def test_songunet_noise_embedding_is_sin_then_cos_with_endpoint_exponents():
    net = small_unet(model_channels=16, channel_mult_noise=1)
    half = 8
    # Make the mapping an identity on the first noise_channels outputs.
    with torch.no_grad():
        net.map_layer0.weight.zero_()
        net.map_layer0.weight[: 2 * half, : 2 * half] = torch.eye(2 * half)
        net.map_layer0.bias.zero_()
        net.map_layer1.weight.copy_(torch.eye(64))
        net.map_layer1.bias.zero_()
        t = torch.tensor([0.7, -2.0])
        emb = net.embed(t, None)
    freqs = torch.tensor([10000.0 ** (-i / (half - 1)) for i in range(half)])
    angles = t[:, None] * freqs[None, :]
    expected = torch.cat([angles.sin(), angles.cos()], dim=1)
    assert torch.allclose(emb[:, : 2 * half], F.silu(F.silu(expected)), atol=1e-6)


@pytest.mark.parametrize(("endpoint", "denominator"), [(True, 3), (False, 4)])
def test_positional_embedding_cos_sin_closed_form(endpoint, denominator):
    emb = PositionalEmbedding(8, max_positions=100, endpoint=endpoint)
    t = torch.tensor([0.5, 3.0])
    freqs = torch.tensor([100.0 ** (-i / denominator) for i in range(4)])
    angles = t[:, None] * freqs
    assert torch.allclose(emb(t), torch.cat([angles.cos(), angles.sin()], dim=1), atol=1e-6)


def test_fourier_embedding_uses_its_frequency_buffer():
    emb = FourierEmbedding(6, scale=16)
    assert [name for name, _ in emb.named_buffers()] == ["freqs"]
    emb.freqs.copy_(torch.tensor([0.25, 1.0, 2.0]))
    t = torch.tensor([0.1, -0.4])
    angles = 2 * math.pi * t[:, None] * emb.freqs
    assert torch.allclose(emb(t), torch.cat([angles.cos(), angles.sin()], dim=1), atol=1e-6)


def test_attention_reads_interleaved_qkv_channels():
    channels = 8
    block = UNetBlock(channels, channels, 4, attention=True, num_heads=1, eps=1e-6)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.norm0.weight.fill_(1)
        block.norm2.weight.fill_(1)
        # q = k = 0 gives uniform attention; v (channel 3c+2) copies normalised channel c.
        for c in range(channels):
            block.qkv.weight[3 * c + 2, c] = 1
        block.proj.weight[:, :, 0, 0] = torch.eye(channels)
        x = torch.randn(2, channels, 4, 4)
        out = block(x, torch.zeros(2, 4))
    normed = F.group_norm(x, 2, eps=1e-6)
    expected = x + normed.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, expected, atol=1e-5)


def test_two_tap_filter_resamples_like_average_pool_and_nearest():
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 1])
    up = Conv2d(3, 3, kernel=0, up=True, resample_filter=[1, 1])
    assert torch.allclose(down(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(up(x), F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)
    assert [name for name, _ in down.named_parameters()] == []


def test_four_tap_resampling_keeps_constants_and_fused_shapes():
    const = torch.full((1, 2, 8, 8), 3.0)
    up = Conv2d(2, 2, kernel=0, up=True, resample_filter=[1, 3, 3, 1])
    assert torch.allclose(up(const)[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))
    fused = Conv2d(2, 5, kernel=3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused(const).shape == (1, 5, 4, 4)
    assert torch.equal(fused.resample_filter, resample_kernel([1, 3, 3, 1]))


@pytest.mark.parametrize(("channels", "groups"), [(16, 4), (128, 32), (256, 32), (96, 24)])
def test_group_norm_groups_rule(channels, groups):
    assert GroupNorm(channels).num_groups == groups
