"""NCSNv2 network: layout equals the official CIFAR-10 checkpoint; math against closed forms."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.nets.ncsnv2 import InstanceNorm2dPlus, NCSNv2, ResidualBlock, ncsn_sigmas

MANIFEST = json.loads((Path(__file__).parent / "manifests" / "ncsnv2_cifar10.json").read_text())
CONFIG = MANIFEST["constructor_kwargs"]["config"]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cifar_net() -> NCSNv2:
    torch.manual_seed(0)
    return NCSNv2.from_config(CONFIG)


def _small_net(**kwargs) -> NCSNv2:
    torch.manual_seed(0)
    return NCSNv2(
        ngf=16, num_classes=10, sigma_begin=5.0, sigma_end=0.1, channels=1, image_size=8, **kwargs
    ).double()


def test_state_dict_layout_matches_manifest(cifar_net):
    got = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in cifar_net.state_dict().items()
    ]
    assert [e[0] for e in got] == [e[0] for e in MANIFEST["state_dict"]]
    assert got == MANIFEST["state_dict"]
    assert len(got) == MANIFEST["num_state_dict_entries"]
    assert sum(p.numel() for p in cifar_net.parameters()) == MANIFEST["param_count"]
    assert [k for k, _ in cifar_net.named_buffers()] == MANIFEST["buffer_keys"]
    assert sum(b.numel() for b in cifar_net.buffers()) == MANIFEST["buffer_numel"]


def test_random_manifest_state_dict_loads_strict():
    net = NCSNv2.from_config(CONFIG)  # own instance: loading overwrites the sigmas buffer too
    gen = torch.Generator().manual_seed(1)
    state = {
        k: torch.randn(shape, generator=gen, dtype=getattr(torch, dtype))
        for k, shape, dtype in MANIFEST["state_dict"]
    }
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(net.sigmas, state["sigmas"])
    assert torch.equal(net.refine4.crp.convs[1].weight, state["refine4.crp.convs.1.weight"])


def test_sigmas_are_geometric_closed_form(cifar_net):
    model = CONFIG["model"]
    begin, end, n = model["sigma_begin"], model["sigma_end"], model["num_classes"]
    i = torch.arange(n, dtype=torch.float64)
    expected = begin * (end / begin) ** (i / (n - 1))
    sigmas = cifar_net.sigmas
    assert sigmas.dtype == torch.float32 and sigmas.shape == (232,)
    torch.testing.assert_close(sigmas.double(), expected, rtol=1e-6, atol=0)
    # the official buffer is numpy's float64 exp(linspace(log)) cast to float32: bit-equal
    official = np.exp(np.linspace(np.log(begin), np.log(end), n)).astype(np.float32)
    assert torch.equal(sigmas, torch.from_numpy(official))
    assert torch.equal(ncsn_sigmas(begin, end, n), sigmas)


def test_ncsn_sigmas_rejects_bad_levels():
    with pytest.raises(ValueError, match="sigma_begin and sigma_end must be > 0, got 0"):
        ncsn_sigmas(0, 0.01, 10)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        ncsn_sigmas(50, 0.01, 1)


def test_instance_norm_plus_closed_form():
    torch.manual_seed(0)
    n, c, h, w = 2, 3, 4, 5
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 3 + 1
    norm = InstanceNorm2dPlus(c).double()
    with torch.no_grad():
        norm.alpha.copy_(torch.tensor([0.5, -1.0, 2.0]))
        norm.gamma.copy_(torch.tensor([1.5, 0.7, -0.3]))
        norm.beta.copy_(torch.tensor([0.1, -0.2, 0.3]))
    eps = 1e-5
    expected = torch.empty_like(x)
    for b in range(n):
        mu = [x[b, k].mean().item() for k in range(c)]
        m = sum(mu) / c
        v = sum((u - m) ** 2 for u in mu) / (c - 1)  # unbiased across channels
        for k in range(c):
            s2 = ((x[b, k] - mu[k]) ** 2).mean()  # biased within a channel
            z = (x[b, k] - mu[k]) / torch.sqrt(s2 + eps)
            z = z + norm.alpha[k].item() * (mu[k] - m) / math.sqrt(v + eps)
            expected[b, k] = norm.gamma[k].item() * z + norm.beta[k].item()
    torch.testing.assert_close(norm(x), expected, rtol=1e-10, atol=1e-10)


def test_residual_block_downsamples_only_without_dilation():
    x = torch.randn(1, 4, 8, 8)
    elu = torch.nn.ELU()
    assert ResidualBlock(4, 6, elu, down=True)(x).shape == (1, 6, 4, 4)
    assert ResidualBlock(4, 6, elu, down=True, dilation=2)(x).shape == (1, 6, 8, 8)
    assert ResidualBlock(4, 4, elu).shortcut is None


def test_forward_divides_by_sigma_of_index():
    net = _small_net()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64).expand(3, -1, -1, -1)
    y = torch.tensor([0, 4, 9])
    with torch.no_grad():
        out = net(x, y)
    assert out.shape == (3, 1, 8, 8)
    raw = out * net.sigmas[y].view(-1, 1, 1, 1)
    # the network is noise-unconditional: only the 1 / sigmas[y] factor depends on y
    torch.testing.assert_close(raw[1], raw[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(raw[2], raw[0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out[0], out[2])
    torch.testing.assert_close(out[2] / out[0], (net.sigmas[0] / net.sigmas[9]).expand(1, 8, 8))


def test_input_in_unit_range_is_mapped_to_minus_one_one():
    net = _small_net()
    rescaled = _small_net(rescaled=True)
    rescaled.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(net(x, y), rescaled(2 * x - 1, y))


def test_bad_inputs_raise_clear_errors():
    net = _small_net()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="y must be an integer noise-level index.*float32"):
        net(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 1, H, W\], got \[2, 3, 8, 8\]"):
        net(torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="normalization 'GroupNorm' is not supported"):
        NCSNv2(normalization="GroupNorm")
    with pytest.raises(ValueError, match="nonlinearity 'gelu' is not supported"):
        NCSNv2(nonlinearity="gelu")
    bad = {"model": {**CONFIG["model"], "spec_norm": True}, "data": CONFIG["data"]}
    with pytest.raises(ValueError, match="spec_norm=True is not supported"):
        NCSNv2.from_config(bad)
