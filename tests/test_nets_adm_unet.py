"""ADMUNet against the improved-diffusion state_dict manifests and closed-form pieces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.nets.adm_unet import (
    ADMUNet,
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    adm_timestep_embedding,
    scale_shift_norm,
)

MANIFEST_DIR = Path(__file__).parent / "manifests"
IDDPM_MANIFESTS = sorted(
    p.name
    for p in MANIFEST_DIR.glob("*.json")
    if json.loads(p.read_text())["source_repo"] == "openai/improved-diffusion"
)
TINY = dict(
    in_channels=1,
    model_channels=32,
    out_channels=2,
    num_res_blocks=1,
    attention_resolutions=(2,),
    dropout=0.0,
    channel_mult=(1, 2),
    num_classes=10,
    use_checkpoint=False,
    num_heads=2,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _load(name: str) -> dict:
    return json.loads((MANIFEST_DIR / name).read_text())


def _group_norm_by_hand(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    mean = grouped.mean(dim=-1, keepdim=True)
    var = grouped.var(dim=-1, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    affine_shape = (1, c) + (1,) * (x.ndim - 2)
    return normed * weight.reshape(affine_shape) + bias.reshape(affine_shape)


def _randomize_(module: torch.nn.Module, scale: float = 0.2) -> None:
    # Replaces the zero init of the residual-branch and output convs so every path is exercised.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def test_the_iddpm_manifests_are_present():
    assert IDDPM_MANIFESTS == [
        "iddpm_cifar10.json", "iddpm_imagenet64.json", "iddpm_imagenet64_cond.json", "iddpm_lsun_bedroom.json"
    ]


@pytest.mark.parametrize("name", IDDPM_MANIFESTS)
def test_state_dict_matches_manifest(name):
    manifest = _load(name)
    model = ADMUNet(**manifest["constructor_kwargs"])
    ours = [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in model.state_dict().items()
    ]
    assert ours == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"]
    assert [name for name, _ in model.named_buffers()] == manifest["buffer_keys"]


@pytest.mark.parametrize("name", IDDPM_MANIFESTS)
def test_random_manifest_state_dict_loads_strictly(name):
    manifest = _load(name)
    model = ADMUNet(**manifest["constructor_kwargs"])
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=gen) for key, shape, _ in manifest["state_dict"]}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.out[2].weight, state["out.2.weight"])


def test_label_embedding_sits_between_time_embed_and_input_blocks():
    keys = list(ADMUNet(**TINY).state_dict())
    assert keys[4] == "label_emb.weight"
    assert keys[3] == "time_embed.2.bias" and keys[5] == "input_blocks.0.0.weight"
    assert ADMUNet(**TINY).label_emb.weight.shape == (10, 128)


def test_timestep_embedding_is_cos_first_with_half_exponent():
    t = torch.tensor([0.0, 0.25, 17.5, 999.75])
    dim = 128
    half = dim // 2
    expected = torch.empty(len(t), dim, dtype=torch.float64)
    for row, step in enumerate(t.tolist()):
        for i in range(half):
            arg = step * math.exp(-math.log(10000.0) * i / half)
            expected[row, i] = math.cos(arg)
            expected[row, half + i] = math.sin(arg)
    got = adm_timestep_embedding(t, dim).double()
    torch.testing.assert_close(got, expected, atol=5e-4, rtol=0)


def test_scale_shift_norm_is_norm_times_one_plus_scale_plus_shift():
    torch.manual_seed(0)
    norm = GroupNorm32(64)
    _randomize_(norm)
    h = torch.randn(2, 64, 4, 4)
    emb_out = torch.randn(2, 128, 1, 1)
    scale, shift = emb_out[:, :64], emb_out[:, 64:]
    normed = _group_norm_by_hand(h, 32, norm.weight, norm.bias, eps=1e-5)
    expected = normed * (1 + scale) + shift
    torch.testing.assert_close(scale_shift_norm(norm, h, emb_out), expected)


def test_resblock_applies_scale_from_first_half_of_emb_layers():
    torch.manual_seed(0)
    block = ResBlock(32, 128, 0.0, 64, use_scale_shift_norm=True).eval()
    _randomize_(block)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 128)
    h = block.in_layers(x)
    emb_out = block.emb_layers(emb)[:, :, None, None]
    scale, shift = emb_out[:, :64], emb_out[:, 64:]
    out_norm = block.out_layers[0]
    normed = _group_norm_by_hand(h, 32, out_norm.weight, out_norm.bias, eps=1e-5)
    expected = block.skip_connection(x) + block.out_layers[3](F.silu(normed * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), expected)


def test_resblock_without_scale_shift_adds_embedding_before_norm():
    torch.manual_seed(0)
    block = ResBlock(32, 128, 0.0, 32, use_scale_shift_norm=False).eval()
    _randomize_(block)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 128)
    h = block.in_layers(x) + block.emb_layers(emb)[:, :, None, None]
    assert block.emb_layers[1].out_features == 32
    torch.testing.assert_close(block(x, emb), x + block.out_layers(h))


def test_attention_qkv_channels_are_grouped_per_head():
    torch.manual_seed(0)
    channels, heads = 64, 2
    head_ch = channels // heads
    block = AttentionBlock(channels, heads).double()
    _randomize_(block)
    x = torch.randn(2, channels, 3, 3, dtype=torch.float64)
    flat = x.reshape(2, channels, 9)
    normed = _group_norm_by_hand(flat, 32, block.norm.weight, block.norm.bias, eps=1e-5)
    weight, bias = block.qkv.weight[:, :, 0], block.qkv.bias
    outs = []
    for head in range(heads):
        base = head * 3 * head_ch

        def proj(part, base=base):
            rows = slice(base + part * head_ch, base + (part + 1) * head_ch)
            return torch.einsum("oc,ncp->nop", weight[rows], normed) + bias[rows, None]

        q, k, v = proj(0), proj(1), proj(2)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(head_ch), dim=-1)
        outs.append(v @ attn.transpose(1, 2))
    expected = flat + block.proj_out(torch.cat(outs, dim=1))
    torch.testing.assert_close(block(x), expected.reshape(x.shape))


def test_downsample_pads_symmetrically():
    down = Downsample(1)
    with torch.no_grad():
        down.op.weight.zero_()
        down.op.weight[0, 0, 0, 0] = 1.0
        down.op.bias.zero_()
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    # The top-left tap of the first window falls on the added top/left zero padding.
    expected = torch.tensor([[[[0.0, 0.0], [0.0, x[0, 0, 1, 1].item()]]]])
    torch.testing.assert_close(down(x), expected)


def test_group_norm32_uses_eps_1e_minus_5_and_float32_math():
    norm = GroupNorm32(64)
    assert (norm.num_groups, norm.eps) == (32, 1e-5)
    x = torch.randn(2, 64, 4, 4).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias, eps=1e-5).to(torch.bfloat16)
    assert torch.equal(out, expected)


def test_num_heads_upsample_minus_one_means_num_heads():
    model = ADMUNet(**{**TINY, "num_heads": 4, "num_heads_upsample": -1})
    heads = {m.num_heads for m in model.output_blocks.modules() if isinstance(m, AttentionBlock)}
    assert heads == {4}
    model = ADMUNet(**{**TINY, "num_heads": 4, "num_heads_upsample": 2})
    heads = {m.num_heads for m in model.output_blocks.modules() if isinstance(m, AttentionBlock)}
    assert heads == {2}


def test_fresh_model_predicts_zeros_because_output_conv_starts_at_zero():
    model = ADMUNet(**TINY).eval()
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 500.25]), torch.tensor([1, 7]))
    assert out.shape == (2, 2, 8, 8)
    assert torch.count_nonzero(out) == 0


def test_tiny_forward_depends_on_time_and_label():
    torch.manual_seed(0)
    model = ADMUNet(**TINY).eval()
    _randomize_(model, scale=0.1)
    x = torch.randn(2, 1, 8, 8)
    base = model(x, torch.tensor([10.0, 10.0]), torch.tensor([3, 3]))
    assert base.shape == (2, 2, 8, 8)
    assert not torch.allclose(base, model(x, torch.tensor([900.0, 900.0]), torch.tensor([3, 3])))
    assert not torch.allclose(base, model(x, torch.tensor([10.0, 10.0]), torch.tensor([4, 4])))


def test_conditional_model_demands_labels():
    with pytest.raises(ValueError, match="num_classes=10 needs class labels y"):
        ADMUNet(**TINY)(torch.zeros(1, 1, 8, 8), torch.zeros(1))


def test_unconditional_model_refuses_labels():
    model = ADMUNet(**{**TINY, "num_classes": None})
    with pytest.raises(ValueError, match="num_classes=None needs no y"):
        model(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_forward_rejects_indivisible_spatial_size():
    with pytest.raises(ValueError, match=r"spatial size \(7, 7\) must be divisible by 2"):
        ADMUNet(**TINY)(torch.zeros(1, 1, 7, 7), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_constructor_rejects_heads_not_dividing_channels():
    with pytest.raises(ValueError, match="channels 64 are not divisible by num_heads 3"):
        ADMUNet(**{**TINY, "num_heads": 3})


def test_constructor_rejects_model_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="model_channels 40 must be a multiple of 32"):
        ADMUNet(**{**TINY, "model_channels": 40})


def test_eps_prediction_training_lowers_loss():
    torch.manual_seed(0)
    model = ADMUNet(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 4000

    def f(s):
        return torch.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    # Nichol & Dhariwal 2021, Eq. 17 (cosine schedule).
    alpha_bar = (f(torch.arange(steps, dtype=torch.float64) + 1) / f(torch.tensor(0.0))).float()
    data = torch.rand(64, 1, 8, 8) * 2.0 - 1.0
    labels = torch.randint(0, 10, (64,))
    losses = []
    for _ in range(30):
        idx = torch.randint(0, len(data), (32,))
        x0, y = data[idx], labels[idx]
        t = torch.randint(0, steps, (32,))
        eps = torch.randn_like(x0)
        ab = alpha_bar[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
        pred = model(x_t, t.float() * 1000.0 / steps, y)[:, :1]
        loss = F.mse_loss(pred, eps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
