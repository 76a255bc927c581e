"""EDM preconditioning wrappers against EDM Table 1, and the manifest-driven builder."""

import math

import pytest
import torch
from torch import nn

from bench.nets import edm_precond
from bench.nets.edm_precond import (
    EDMPrecond,
    VEPrecond,
    VPPrecond,
    build_edm_network,
    iDDPMPrecond,
    register_backbone,
)
from bench.nets.song_unet import SongUNet

torch.set_num_threads(1)

SIGMAS = [0.002, 0.05, 0.5, 1.0, 7.3, 80.0]


class ConstantNet(nn.Module):
    """Backbone returning a constant and recording what it was called with."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, value=0.0):
        super().__init__()
        self.out_channels = out_channels
        self.value = value
        self.calls = []

    def forward(self, x, noise_labels, class_labels=None, **kwargs):
        self.calls.append(dict(x=x, noise_labels=noise_labels, class_labels=class_labels, **kwargs))
        shape = (x.shape[0], self.out_channels, *x.shape[2:])
        return torch.full(shape, self.value, dtype=x.dtype)


def wrap(cls, out_channels=3, label_dim=0, value=0.0, **kwargs):
    return cls(ConstantNet(8, 3, out_channels, value=value), 8, 3, label_dim=label_dim, **kwargs)


def coefficients(net, sigma):
    # float64 so the comparison tests the formulas, not float32 cancellation in log(1+sigma^2).
    c = net.coefficients(torch.full((1, 1, 1, 1), sigma, dtype=torch.float64))
    return [float(v.flatten()[0]) for v in c]


@pytest.mark.parametrize("sigma", SIGMAS)
def test_edm_coefficients_closed_form(sigma):
    sd = 0.5
    expected = [
        sd**2 / (sigma**2 + sd**2),
        sigma * sd / math.sqrt(sigma**2 + sd**2),
        1 / math.sqrt(sigma**2 + sd**2),
        math.log(sigma) / 4,
    ]
    assert coefficients(wrap(EDMPrecond), sigma) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_vp_coefficients_closed_form(sigma):
    beta_d, beta_min = 19.9, 0.1
    t = (math.sqrt(beta_min**2 + 2 * beta_d * math.log(1 + sigma**2)) - beta_min) / beta_d
    expected = [1.0, -sigma, 1 / math.sqrt(1 + sigma**2), 999 * t]
    assert coefficients(wrap(VPPrecond), sigma) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # t must solve sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
    assert math.sqrt(math.expm1(0.5 * beta_d * t**2 + beta_min * t)) == pytest.approx(sigma)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_ve_coefficients_closed_form(sigma):
    expected = [1.0, sigma, 1.0, math.log(sigma / 2)]
    assert coefficients(wrap(VEPrecond), sigma) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_wrapper_defaults_and_supported_ranges():
    edm, vp, ve = wrap(EDMPrecond), wrap(VPPrecond), wrap(VEPrecond)
    assert (edm.sigma_min, edm.sigma_max, edm.sigma_data) == (0.0, math.inf, 0.5)
    assert (vp.beta_d, vp.beta_min, vp.M, vp.epsilon_t) == (19.9, 0.1, 1000, 1e-5)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-6)
    # Evaluated in float32 like the official code, hence ~2% off the exact 1.0e-3.
    exact_sigma_min = math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5))
    assert vp.sigma_min == pytest.approx(exact_sigma_min, rel=0.03)
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)


def test_vp_sigma_and_sigma_inv_are_inverse():
    vp = wrap(VPPrecond)
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(vp.sigma_inv(vp.sigma(t)), t, rtol=1e-9)
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    assert torch.allclose(vp.sigma(vp.sigma_inv(sigma)), sigma, rtol=1e-9)


@pytest.mark.parametrize(
    ("cls", "out_channels"),
    [(EDMPrecond, 3), (VPPrecond, 3), (VEPrecond, 3), (iDDPMPrecond, 6)],
)
def test_zero_backbone_gives_skip_connection_only(cls, out_channels):
    net = wrap(cls, out_channels=out_channels)
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    c_skip = net.coefficients(sigma.reshape(-1, 1, 1, 1)).c_skip
    assert torch.allclose(net(x, sigma), c_skip * x)


def test_backbone_receives_scaled_input_noise_label_and_adds_c_out():
    net = wrap(EDMPrecond, value=1.0)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.2, 5.0])
    out = net(x, sigma)
    call = net.model.calls[-1]
    c = net.coefficients(sigma.reshape(-1, 1, 1, 1))
    assert torch.allclose(call["x"], c.c_in * x)
    assert torch.allclose(call["noise_labels"], sigma.log() / 4)
    assert call["class_labels"] is None
    assert torch.allclose(out, c.c_skip * x + c.c_out)


def test_scalar_sigma_is_broadcast_and_wrong_count_rejected():
    net = wrap(VEPrecond)
    net(torch.randn(3, 3, 8, 8), 2.0)
    assert net.model.calls[-1]["noise_labels"].shape == (3,)
    with pytest.raises(ValueError, match="sigma has 2 values for a batch of 3"):
        net(torch.randn(3, 3, 8, 8), torch.tensor([1.0, 2.0]))


def test_missing_class_labels_become_zeros_and_extra_kwargs_pass_through():
    net = wrap(EDMPrecond, label_dim=10)
    aug = torch.randn(2, 9)
    net(torch.randn(2, 3, 8, 8), torch.ones(2), augment_labels=aug)
    call = net.model.calls[-1]
    assert torch.equal(call["class_labels"], torch.zeros(1, 10))
    assert call["augment_labels"] is aug
    labels = torch.eye(10)[[3, 4]]
    net(torch.randn(2, 3, 8, 8), torch.ones(2), labels)
    assert torch.equal(net.model.calls[-1]["class_labels"], labels)


def test_iddpm_grid_and_round_sigma():
    net = wrap(iDDPMPrecond, out_channels=6)
    u = net.u
    assert u.shape == (1001,) and u[-1] == 0 and bool((u[:-1] > u[1:]).all())
    assert (net.sigma_min, net.sigma_max) == (float(u[999]), float(u[0]))
    # Recurrence of EDM Table 1 (iDDPM column); the grid itself is float32 like the official one.
    for j in (1, 500, 1000):
        ratio = max(float(net.alpha_bar(j - 1) / net.alpha_bar(j)), 0.001)
        expected = math.sqrt((float(u[j]) ** 2 + 1) / ratio - 1)
        assert float(u[j - 1]) == pytest.approx(expected, rel=1e-4)
    sigma = torch.tensor([0.003, 0.2, 1.0, 13.0, 79.9, 1e5])
    rounded = net.round_sigma(sigma)
    index = net.round_sigma(sigma, return_index=True)
    assert torch.equal(rounded, u[index])
    distance = (sigma[:, None] - u[None, :]).abs()
    assert torch.equal((rounded - sigma).abs(), distance.min(dim=1).values)
    assert net.round_sigma(u[[7, 300]]).tolist() == u[[7, 300]].tolist()
    c = net.coefficients(u[[7, 300]].reshape(-1, 1, 1, 1))
    assert c.c_noise.tolist() == [999 - 7, 999 - 300]


def test_continuous_wrappers_do_not_round_sigma():
    for cls in (EDMPrecond, VPPrecond, VEPrecond):
        assert wrap(cls).round_sigma(0.1234).item() == pytest.approx(0.1234)


SMALL_SONGUNET = dict(
    model_type="SongUNet",
    img_resolution=8,
    img_channels=3,
    model_channels=16,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
)


@pytest.mark.parametrize(
    ("class_name", "cls", "out_channels"),
    [
        ("training.networks.VPPrecond", VPPrecond, 3),
        ("VEPrecond", VEPrecond, 3),
        ("training.networks.iDDPMPrecond", iDDPMPrecond, 6),
    ],
)
def test_builder_routes_kwargs_to_wrapper_and_backbone(class_name, cls, out_channels):
    hyper = {"VPPrecond": {"beta_d": 10.0}, "VEPrecond": {"sigma_max": 50.0}}
    extra = hyper.get(cls.__name__, {"M": 500})
    net = build_edm_network(dict(SMALL_SONGUNET, class_name=class_name, use_fp16=True, **extra))
    assert type(net) is cls and isinstance(net.model, SongUNet)
    assert net.model.out_channels == out_channels and net.use_fp16
    for key, value in extra.items():
        assert getattr(net, key) == value
    keys = list(net.state_dict())
    assert all(k.startswith("model.") for k in keys if k != "u")
    assert ("u" in keys) == (cls is iDDPMPrecond)
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0]))
    assert out.shape == (2, 3, 8, 8)


def test_builder_rejects_unknown_class_and_model_type():
    with pytest.raises(ValueError, match="unknown class_name 'training.networks.Foo'.*EDMPrecond"):
        build_edm_network(dict(SMALL_SONGUNET, class_name="training.networks.Foo"))
    with pytest.raises(ValueError, match="unknown model_type 'NoSuchUNet'.*SongUNet"):
        build_edm_network(dict(SMALL_SONGUNET, model_type="NoSuchUNet"))
    with pytest.raises(ValueError, match="lacks 'img_channels'"):
        build_edm_network({"class_name": "training.networks.VEPrecond", "img_resolution": 8})


def test_register_backbone_makes_model_type_buildable(monkeypatch):
    monkeypatch.setattr(edm_precond, "BACKBONES", dict(edm_precond.BACKBONES))
    register_backbone("ConstantNet", ConstantNet)
    net = build_edm_network(
        {
            "class_name": "training.networks.EDMPrecond",
            "model_type": "ConstantNet",
            "img_resolution": 8,
            "img_channels": 3,
            "value": 2.0,
        }
    )
    assert isinstance(net.model, ConstantNet) and net.model.value == 2.0
    register_backbone("ConstantNet", ConstantNet)  # idempotent for the same class
    with pytest.raises(ValueError, match="'ConstantNet' is already registered"):
        register_backbone("ConstantNet", SongUNet)
