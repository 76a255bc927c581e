"""score-SDE's NCSN++ / DDPM++ / DDPM: layouts equal the official modules' manifests; math against closed forms."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.checkpoints.layouts import load_strict
from bench.nets.score_sde_configs import SCORE_SDE_CIFAR10, build_score_sde_network
from bench.nets.score_sde_ddpm import ScoreSdeDDPM
from bench.nets.score_sde_layers import (
    GaussianFourierProjection,
    ResnetBlockBigGAN,
    UpsamplePP,
    conv_downsample_2d,
    downsample_2d,
    naive_downsample_2d,
    naive_upsample_2d,
    timestep_embedding,
    upsample_2d,
)
from bench.nets.score_sde_ncsnpp import ScoreSdeNCSNpp, smld_sigmas

MANIFESTS = Path(__file__).parent / "manifests"
MANIFEST_NAMES = sorted(p.stem for p in MANIFESTS.glob("score_sde_*.json"))
torch.set_num_threads(1)


def _manifest(stem: str) -> dict:
    return json.loads((MANIFESTS / f"{stem}.json").read_text())


def _build(config: str) -> torch.nn.Module:
    torch.manual_seed(0)
    entry = SCORE_SDE_CIFAR10[config]
    return build_score_sde_network({"type": entry["type"], **entry["kwargs"]})


def _layout(net: torch.nn.Module) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]


# Where each of our kwargs sits in score_sde's ml_collections config.
_CONFIG_SECTION = {"image_size": "data", "num_channels": "data", "centered": "data"}


def test_manifests_cover_every_cifar10_config():
    assert len(MANIFEST_NAMES) == 6
    covered = [c for stem in MANIFEST_NAMES for c in _manifest(stem)["configs_with_this_layout"]]
    assert sorted(covered) == sorted(SCORE_SDE_CIFAR10)


@pytest.mark.parametrize("stem", MANIFEST_NAMES)
def test_presets_are_the_official_config_values(stem):
    manifest = _manifest(stem)
    config = manifest["config_file"].removeprefix("configs/").removesuffix(".py")
    official = manifest["constructor_kwargs"]["config"]
    entry = SCORE_SDE_CIFAR10[config]
    assert entry["type"] == f"score_sde_{official['model']['name']}"
    assert (entry["sde"], entry["continuous"]) == (official["training"]["sde"], official["training"]["continuous"])
    for key, value in entry["kwargs"].items():
        section = official[_CONFIG_SECTION.get(key, "model")]
        if key == "fourier_scale" and entry["kwargs"]["embedding_type"] == "positional" and key not in section:
            continue  # unused by the positional embedding; absent from that config file
        assert section[key] == value, key


@pytest.mark.parametrize("stem", MANIFEST_NAMES)
def test_state_dict_layout_is_the_official_modules(stem):
    manifest = _manifest(stem)
    for config in manifest["configs_with_this_layout"]:
        net = _build(config)
        assert _layout(net) == manifest["state_dict"], config
        assert sum(p.numel() for p in net.parameters()) == manifest["param_count"]
        assert [k for k, _ in net.named_buffers()] == manifest["buffer_keys"] == ["sigmas"]
        excluded = [k for k, p in net.named_parameters() if not p.requires_grad]
        assert excluded == manifest["checkpoint"]["ema_excluded_parameters"]


@pytest.mark.parametrize("stem", MANIFEST_NAMES)
def test_a_manifest_state_dict_loads_strictly_and_every_tensor_lands(stem):
    manifest = _manifest(stem)
    net = _build(manifest["configs_with_this_layout"][0])
    gen = torch.Generator().manual_seed(1)
    state = OrderedDict(
        (k, torch.randn(shape, generator=gen, dtype=getattr(torch, dtype))) for k, shape, dtype in manifest["state_dict"]
    )
    load_strict(net, state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("stem", MANIFEST_NAMES)
def test_forward_shape_and_dtype_are_the_official_ones(stem):
    manifest = _manifest(stem)
    net = _build(manifest["config_file"].removeprefix("configs/").removesuffix(".py")).eval()
    dtype = getattr(torch, manifest["inputs"]["time_cond_dtype"])
    cond = torch.tensor([3, 500], dtype=dtype) if dtype == torch.int64 else torch.tensor([0.5, 20.0], dtype=dtype)
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32), cond)
    assert list(out.shape) == manifest["outputs"]["observed_shape"]
    assert str(out.dtype).removeprefix("torch.") == manifest["outputs"]["observed_dtype"]


def test_sigmas_are_score_sdes_geometric_table():
    sigmas = _build("ve/cifar10_ncsnpp_continuous").sigmas
    assert sigmas.dtype == torch.float64 and sigmas.shape == (1000,)
    i = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(sigmas, 50 * (0.01 / 50) ** (i / 999), rtol=1e-13, atol=0)
    assert torch.equal(sigmas, torch.from_numpy(np.exp(np.linspace(np.log(50), np.log(0.01), 1000))))
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max, got sigma_min=1, sigma_max=0.5"):
        smld_sigmas(1, 0.5, 10)


def test_fourier_features_are_fixed_and_closed_form():
    torch.manual_seed(0)
    proj = GaussianFourierProjection(embedding_size=8, scale=16).double()
    assert not proj.W.requires_grad and "W" in proj.state_dict()
    s = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    arg = 2 * math.pi * s[:, None] * proj.W[None, :]
    torch.testing.assert_close(proj(s), torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))


def test_positional_embedding_is_ddpms_sin_then_cos():
    t = torch.tensor([0.0, 7.0, 999.0])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([10000 ** (-i / 2) for i in range(3)])
    torch.testing.assert_close(emb, torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1))
    assert timestep_embedding(t, 7).shape == (3, 7) and torch.all(timestep_embedding(t, 7)[:, -1] == 0)


def _pair(cls, **kwargs):
    """Two networks with the same weights, differing only in the given kwargs' second values."""
    first = {k: v[0] for k, v in kwargs.items()}
    second = {k: v[1] for k, v in kwargs.items()}
    torch.manual_seed(0)
    small = {"nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,), "image_size": 16}
    a = cls(**small, **first).eval()
    b = cls(**small, **second).eval()
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    b.load_state_dict(a.state_dict())
    return a, b


def test_scale_by_sigma_divides_by_the_conditioning_sigma_exactly():
    scaled, plain = _pair(ScoreSdeNCSNpp, scale_by_sigma=(True, False))
    x = torch.rand(2, 3, 16, 16)
    sigma = torch.tensor([0.02, 30.0])
    with torch.no_grad():
        assert torch.equal(scaled(x, sigma), plain(x, sigma) / sigma[:, None, None, None])
    scaled, plain = _pair(ScoreSdeNCSNpp, embedding_type=("positional",) * 2, scale_by_sigma=(True, False))
    index = torch.tensor([0, 999])
    with torch.no_grad():
        out = scaled(x, index)
        assert torch.equal(out, plain(x, index) / scaled.sigmas[index][:, None, None, None])
        torch.testing.assert_close(out[0] * 50, plain(x, index)[0].double())
    scaled, plain = _pair(ScoreSdeDDPM, scale_by_sigma=(True, False))
    with torch.no_grad():
        assert torch.equal(scaled(x, index), plain(x, index) / scaled.sigmas[index][:, None, None, None])


@pytest.mark.parametrize("cls", [ScoreSdeNCSNpp, ScoreSdeDDPM])
def test_uncentered_data_is_mapped_to_minus_one_one_first(cls):
    uncentered, centered = _pair(cls, centered=(False, True), scale_by_sigma=(False, False))
    x = torch.rand(2, 3, 16, 16)
    cond = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.equal(uncentered(x, cond), centered(2 * x - 1, cond))


def test_fir_resampling_against_closed_forms():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    # The box filter [1, 1] is average pooling down and nearest-neighbour up.
    torch.testing.assert_close(downsample_2d(x, (1, 1)), F.avg_pool2d(x, 2))
    torch.testing.assert_close(upsample_2d(x, (1, 1)), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(naive_downsample_2d(x), F.avg_pool2d(x, 2))
    assert torch.equal(naive_upsample_2d(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    # [1, 3, 3, 1]: outer(k, k)/64, a stride-2 correlation padded by 1 down; a transposed one with gain 4 up.
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    k2 = torch.outer(k, k) / 64
    depthwise = k2.expand(3, 1, 4, 4)
    torch.testing.assert_close(downsample_2d(x, (1, 3, 3, 1)), F.conv2d(x, depthwise, stride=2, padding=1, groups=3))
    torch.testing.assert_close(upsample_2d(x, (1, 3, 3, 1)),
                               F.conv_transpose2d(x, 4 * depthwise, stride=2, padding=1, groups=3))
    # Fused FIR + 3x3 stride-2 conv: the filter, then a valid convolution of the image padded by 2.
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    filtered = F.conv2d(F.pad(x, (2, 2, 2, 2)), depthwise, groups=3)
    torch.testing.assert_close(conv_downsample_2d(x, w, (1, 3, 3, 1)), F.conv2d(filtered, w, stride=2))


def test_biggan_block_resamples_both_branches():
    torch.manual_seed(0)
    block = ResnetBlockBigGAN(torch.nn.SiLU(), in_ch=8, out_ch=8, temb_dim=4, down=True, fir=True).double()
    assert "Conv_2.weight" in block.state_dict()  # resampling blocks always project the skip
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        block.Conv_1.weight.zero_()
        block.Conv_1.bias.zero_()
        out = block(x, torch.randn(1, 4, dtype=torch.float64))
    torch.testing.assert_close(out, block.Conv_2(downsample_2d(x, (1, 3, 3, 1))) / math.sqrt(2))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"progressive 'skip' is not one of \['none', 'output_skip', 'residual'\]"):
        ScoreSdeNCSNpp(progressive="skip")
    with pytest.raises(ValueError, match="nonlinearity 'gelu' is not one of"):
        ScoreSdeNCSNpp(nonlinearity="gelu")
    with pytest.raises(NotImplementedError, match=r"up_or_down_sampling.py L126"):
        UpsamplePP(in_ch=4, with_conv=True, fir=True)
    with pytest.raises(ValueError, match=r"network type 'score_sde_ncsnpp' takes no option\(s\) \['ch'\]"):
        build_score_sde_network({"type": "score_sde_ncsnpp", "ch": 128})
    with pytest.raises(ValueError, match=r"network type 'ddpm_unet' is not one of \['score_sde_ddpm', 'score_sde_ncsnpp'\]"):
        build_score_sde_network({"type": "ddpm_unet"})
    with pytest.raises(ValueError, match="conditional=False is not supported"):
        ScoreSdeDDPM(conditional=False)
    net = ScoreSdeDDPM(nf=32, ch_mult=(1,), num_res_blocks=1, image_size=8)
    with pytest.raises(ValueError, match=r"x has shape \[1, 3, 16, 16\], the network takes \[N, 3, 8, 8\]"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1))
