"""NCSN's CondRefineNetDilated: layout equals the official CIFAR-10 network's; math against closed forms."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.checkpoints.layouts import load_strict
from bench.nets.factory import build_network
from bench.nets.ncsnv1 import (
    CondCRPBlock,
    CondInstanceNorm2dPlus,
    CondRefineNetDilated,
    CondResidualBlock,
    ConvMeanPool,
    ncsn_v1_sigmas,
)

MANIFEST = json.loads((Path(__file__).parent / "manifests" / "ncsn_cifar10.json").read_text())
CONFIG = MANIFEST["constructor_kwargs"]["config"]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cifar_net() -> CondRefineNetDilated:
    torch.manual_seed(0)
    return CondRefineNetDilated.from_config(CONFIG)


def _small_net(num_classes: int = 4) -> CondRefineNetDilated:
    torch.manual_seed(0)
    return CondRefineNetDilated(ngf=8, num_classes=num_classes, channels=1, image_size=8).double().eval()


def test_state_dict_layout_matches_manifest(cifar_net):
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in cifar_net.state_dict().items()]
    assert [e[0] for e in got] == [e[0] for e in MANIFEST["state_dict"]]
    assert got == MANIFEST["state_dict"]
    assert len(got) == MANIFEST["num_state_dict_entries"]
    assert sum(p.numel() for p in cifar_net.parameters()) == MANIFEST["param_count"]
    # no buffer: the official network keeps no level table (runners/anneal_runner.py builds it at L232-233)
    assert [k for k, _ in cifar_net.named_buffers()] == MANIFEST["buffer_keys"] == []


def test_the_config_of_the_paper_profile_builds_the_manifests_network():
    network = {"type": "ncsnv1", "ngf": 128, "num_classes": 10, "sigma_begin": 1.0, "sigma_end": 0.01}
    net = build_network(network, channels=3, image_size=32)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == [e[:2] for e in MANIFEST["state_dict"]]


def test_random_manifest_state_dict_loads_strict():
    net = CondRefineNetDilated.from_config(CONFIG)
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=gen, dtype=getattr(torch, dtype))
             for k, shape, dtype in MANIFEST["state_dict"]}
    load_strict(net, state)
    assert torch.equal(net.refine4.crp.norms[1].embed.weight, state["refine4.crp.norms.1.embed.weight"])
    assert torch.equal(net.res3[0].shortcut.weight, state["res3.0.shortcut.weight"])


def test_sigmas_are_the_official_float64_table(cifar_net):
    model = CONFIG["model"]
    begin, end, n = model["sigma_begin"], model["sigma_end"], model["num_classes"]
    sigmas = cifar_net.sigmas
    assert sigmas.dtype == torch.float64 and sigmas.shape == (10,)
    i = torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(sigmas, begin * (end / begin) ** (i / (n - 1)), rtol=1e-14, atol=0)
    # runners/anneal_runner.py L232-233, bit for bit: the values its step sizes are computed from
    assert torch.equal(sigmas, torch.from_numpy(np.exp(np.linspace(np.log(begin), np.log(end), n))))
    # a dtype cast of the network leaves the table alone (it is no buffer)
    assert cifar_net.float().sigmas.dtype == torch.float64
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        ncsn_v1_sigmas(1.0, 0.01, 1)


def test_conditional_instance_norm_plus_closed_form():
    torch.manual_seed(0)
    n, c, h, w, levels = 2, 3, 4, 5, 4
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 3 + 1
    norm = CondInstanceNorm2dPlus(c, levels).double()
    with torch.no_grad():
        norm.embed.weight.copy_(torch.randn(levels, 3 * c, dtype=torch.float64))
    y = torch.tensor([3, 1])
    eps = 1e-5
    expected = torch.empty_like(x)
    for b in range(n):
        gamma, alpha, beta = norm.embed.weight[y[b]].detach().split(c)  # embed(y).chunk(3): gamma, alpha, beta
        mu = [x[b, k].mean().item() for k in range(c)]
        m = sum(mu) / c
        v = sum((u - m) ** 2 for u in mu) / (c - 1)  # unbiased across channels
        for k in range(c):
            s2 = ((x[b, k] - mu[k]) ** 2).mean()  # biased within a channel
            z = (x[b, k] - mu[k]) / torch.sqrt(s2 + eps) + alpha[k] * (mu[k] - m) / math.sqrt(v + eps)
            expected[b, k] = gamma[k] * z + beta[k]
    torch.testing.assert_close(norm(x, y), expected, rtol=1e-10, atol=1e-10)


def test_the_norms_start_as_the_official_initialisation():
    norm = CondInstanceNorm2dPlus(64, 10)
    scale, shift = norm.embed.weight[:, :128], norm.embed.weight[:, 128:]
    assert torch.equal(shift, torch.zeros_like(shift))
    assert abs(scale.mean().item() - 1) < 0.01 and abs(scale.std().item() - 0.02) < 0.005


def test_crp_pools_by_a_5x5_mean_that_counts_its_zero_padding():
    """The official CondCRPBlock's 'maxpool' is an AvgPool2d(5, 1, 2): with identity convolutions and plain
    normalisation, each stage adds the 5x5 mean (padding zeros included) of the normalised previous path."""
    torch.manual_seed(0)
    block = CondCRPBlock(2, 2, 3, torch.nn.Identity()).double()
    with torch.no_grad():
        for conv in block.convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        for norm in block.norms:
            norm.embed.weight.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]).expand(3, -1))
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    y = torch.tensor([2])

    def mean5(t: torch.Tensor) -> torch.Tensor:
        padded = F.pad(t, (2, 2, 2, 2))
        return padded.unfold(2, 5, 1).unfold(3, 5, 1).sum(dim=(-1, -2)) / 25

    p1 = mean5(F.instance_norm(x, eps=1e-5))
    p2 = mean5(F.instance_norm(p1, eps=1e-5))
    torch.testing.assert_close(block(x, y), x + p1 + p2, rtol=1e-12, atol=1e-12)


def test_residual_blocks_downsample_only_without_dilation():
    x = torch.randn(1, 4, 8, 8)
    y = torch.tensor([0])
    elu = torch.nn.ELU()
    assert CondResidualBlock(4, 6, 2, elu, down=True)(x, y).shape == (1, 6, 4, 4)
    dilated = CondResidualBlock(4, 6, 2, elu, down=True, dilation=2)
    assert dilated(x, y).shape == (1, 6, 8, 8) and dilated.shortcut.dilation == (2, 2)
    assert CondResidualBlock(4, 4, 2, elu, dilation=4).shortcut is None
    with pytest.raises(ValueError, match="an undilated block that keeps the resolution keeps its channels, got 4 -> 6"):
        CondResidualBlock(4, 6, 2, elu)
    pool = ConvMeanPool(1, 1, 1)
    with torch.no_grad():
        pool.conv.weight.fill_(1.0)
        pool.conv.bias.zero_()
    z = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(pool(z), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_the_output_is_the_score_itself_conditioned_only_through_the_norms():
    """With every level's embedding row equal, all levels give the same output: NCSN divides by no sigma (its
    forward ends at end_conv, cond_refinenet_dilated.py L414-417), where NCSNv2's output scales as 1 / sigma."""
    net = _small_net()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64).expand(4, -1, -1, -1)
    y = torch.arange(4)
    with torch.no_grad():
        distinct = net(x, y)
        for module in net.modules():
            if isinstance(module, CondInstanceNorm2dPlus):
                module.embed.weight.copy_(module.embed.weight[:1].expand_as(module.embed.weight))
        shared = net(x, y)
    assert not torch.allclose(distinct[0], distinct[3])
    for k in range(1, 4):
        torch.testing.assert_close(shared[k], shared[0], rtol=0, atol=0)


def test_input_in_unit_range_is_centred():
    """The first convolution sees 2 x - 1 (L399-400, logit_transform false)."""
    net = _small_net()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    seen = []
    net.begin_conv.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        net(x, torch.tensor([1, 3]))
    torch.testing.assert_close(seen[0], 2 * x - 1, rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    net = _small_net()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="y must be an integer noise-level index.*float32"):
        net(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 1, H, W\], got \[2, 3, 8, 8\]"):
        net(torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image_size must be even"):
        CondRefineNetDilated(image_size=7)
    bad = {"model": CONFIG["model"], "data": {**CONFIG["data"], "logit_transform": True}}
    with pytest.raises(ValueError, match="logit_transform=True is not supported"):
        CondRefineNetDilated.from_config(bad)
