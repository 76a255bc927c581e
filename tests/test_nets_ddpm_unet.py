"""DDPMUNet against the ermongroup/ddim state_dict manifests and closed-form pieces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.nets.ddpm_unet import (
    AttnBlock,
    DDPMUNet,
    Downsample,
    ddpm_timestep_embedding,
)

MANIFEST_DIR = Path(__file__).parent / "manifests"
DDIM_MANIFESTS = sorted(
    p.name
    for p in MANIFEST_DIR.glob("*.json")
    if json.loads(p.read_text())["source_repo"] == "ermongroup/ddim"
)
TINY = dict(
    in_channels=1,
    out_ch=1,
    image_size=8,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.0,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _load(name: str) -> dict:
    return json.loads((MANIFEST_DIR / name).read_text())


def test_both_ddim_manifests_are_present():
    assert DDIM_MANIFESTS == ["ddim_celeba64.json", "ddim_cifar10.json"]


@pytest.mark.parametrize("name", DDIM_MANIFESTS)
def test_state_dict_matches_manifest(name):
    manifest = _load(name)
    model = DDPMUNet.from_config(manifest["constructor_kwargs"]["config"])
    ours = [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in model.state_dict().items()
    ]
    assert ours == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    assert [name for name, _ in model.named_buffers()] == manifest["buffer_keys"]


@pytest.mark.parametrize("name", DDIM_MANIFESTS)
def test_random_manifest_state_dict_loads_strictly(name):
    manifest = _load(name)
    model = DDPMUNet.from_config(manifest["constructor_kwargs"]["config"])
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=gen) for key, shape, _ in manifest["state_dict"]}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.conv_out.weight, state["conv_out.weight"])


def test_timestep_embedding_is_sin_first_with_half_minus_one_exponent():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    dim = 128
    half = dim // 2
    expected = torch.empty(len(t), dim, dtype=torch.float64)
    for row, step in enumerate(t.tolist()):
        for i in range(half):
            arg = step * math.exp(-math.log(10000.0) * i / (half - 1))
            expected[row, i] = math.sin(arg)
            expected[row, half + i] = math.cos(arg)
    got = ddpm_timestep_embedding(t, dim).double()
    torch.testing.assert_close(got, expected, atol=5e-4, rtol=0)


def test_timestep_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="embedding dim 7"):
        ddpm_timestep_embedding(torch.zeros(2), 7)


def _delta_conv(down: Downsample, row: int, col: int) -> None:
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, row, col] = 1.0
        down.conv.bias.zero_()


def test_downsample_pads_only_right_and_bottom():
    down = Downsample(1, with_conv=True)
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    # Top-left tap reads the unpadded input: no row/column was added on the top or left.
    _delta_conv(down, 0, 0)
    torch.testing.assert_close(down(x), x[:, :, 0::2, 0::2])
    # Bottom-right tap runs into the single zero row/column added on the bottom/right.
    _delta_conv(down, 2, 2)
    expected = torch.tensor([[[[x[0, 0, 2, 2].item(), 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(down(x), expected)


def test_downsample_without_conv_averages_2x2():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    torch.testing.assert_close(Downsample(1, with_conv=False)(x), expected)


def test_attention_is_single_head_softmax_with_c_to_minus_half():
    torch.manual_seed(0)
    block = AttnBlock(32).double()
    x = torch.randn(2, 32, 3, 3, dtype=torch.float64)
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, eps=1e-6)
    flat = h.reshape(2, 32, 9)

    def proj(conv):
        return torch.einsum("oc,ncp->nop", conv.weight[:, :, 0, 0], flat) + conv.bias[:, None]

    q, k, v = proj(block.q), proj(block.k), proj(block.v)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)
    attended = (v @ weights.transpose(1, 2)).reshape(2, 32, 3, 3)
    expected = x + block.proj_out(attended)
    torch.testing.assert_close(block(x), expected)


def test_every_group_norm_uses_32_groups_and_eps_1e_minus_6():
    norms = [m for m in DDPMUNet(**TINY).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms
    assert {(m.num_groups, m.eps) for m in norms} == {(32, 1e-6)}


def test_tiny_forward_shape_and_time_dependence():
    torch.manual_seed(0)
    model = DDPMUNet(**TINY).eval()
    x = torch.randn(3, 1, 8, 8)
    out_early = model(x, torch.zeros(3))
    out_late = model(x, torch.full((3,), 999.0))
    assert out_early.shape == (3, 1, 8, 8)
    assert not torch.allclose(out_early, out_late)


def test_forward_rejects_wrong_spatial_size():
    model = DDPMUNet(**TINY)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 1, 8, 8\], got \(2, 1, 16, 16\)"):
        model(torch.zeros(2, 1, 16, 16), torch.zeros(2))


def test_forward_rejects_wrong_timestep_shape():
    model = DDPMUNet(**TINY)
    with pytest.raises(ValueError, match=r"t must have shape \[2\], got \(2, 1\)"):
        model(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1))


def test_constructor_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="ch 48 must be a multiple of 32"):
        DDPMUNet(**{**TINY, "ch": 48})


def test_constructor_rejects_image_size_not_divisible_by_levels():
    with pytest.raises(ValueError, match="image_size 6 must be divisible by 2\\*\\*2"):
        DDPMUNet(**{**TINY, "ch_mult": (1, 2, 2), "image_size": 6})


def test_from_config_rejects_bayesian_type():
    config = _load("ddim_cifar10.json")["constructor_kwargs"]["config"]
    config["model"]["type"] = "bayesian"
    with pytest.raises(ValueError, match="model.type 'bayesian' is not supported"):
        DDPMUNet.from_config(config)


def test_from_config_names_missing_section():
    with pytest.raises(KeyError, match="lacks the 'data' section"):
        DDPMUNet.from_config({"model": {}})


def test_eps_prediction_training_lowers_loss():
    torch.manual_seed(0)
    model = DDPMUNet(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1.0 - betas, dim=0).float()
    data = torch.rand(64, 1, 8, 8) * 2.0 - 1.0
    losses = []
    for _ in range(30):
        x0 = data[torch.randint(0, len(data), (32,))]
        t = torch.randint(0, 1000, (32,))
        eps = torch.randn_like(x0)
        ab = alpha_bar[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps  # Ho et al. 2020, Eq. 4
        loss = F.mse_loss(model(x_t, t.float()), eps)  # Ho et al. 2020, Eq. 14
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
