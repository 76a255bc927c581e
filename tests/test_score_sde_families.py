"""score-SDE's own networks as denoisers: the VE and VP adapters against Gaussians whose scores are closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.core.denoiser import as_sigma
from bench.core.spaces import view_for
from bench.core.vp_schedule import VPSDE
from bench.families import check_model, make_denoiser
from bench.methods.ncsn import VESchedule

torch.set_num_threads(1)


class _GaussianVEScore(nn.Module):
    """The exact score of N(mean, var I) + time_cond z on the network's own data scale, with its ``centered`` flag."""

    def __init__(self, mean: float, var: float, centered: bool):
        super().__init__()
        self.mean, self.var, self.centered = mean, var, centered
        self.seen: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
        self.seen.append(time_cond)
        return -(x - self.mean) / (self.var + time_cond.view(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("sigma", [0.02, 0.7, 100.0])
def test_an_uncentered_ve_network_is_read_on_data_in_minus_one_one(sigma):
    # x in [0, 1] ~ N(0.6, 0.01): y = 2x - 1 ~ N(0.2, 0.04), whose score at level sigma is -(y - 0.2) / (0.04 + sigma^2).
    net = _GaussianVEScore(mean=0.6, var=0.01, centered=False)
    score = make_denoiser("score_sde_ve", net, VESchedule(0.02, 100.0), (3, 4, 4))
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = -(y - 0.2) / (0.04 + sigma**2)
    torch.testing.assert_close(score(y, sigma), expected, rtol=1e-12, atol=0)
    # score-SDE's continuous VE time_cond is sigma(t) on the network's scale (models/utils.py L165).
    torch.testing.assert_close(net.seen[-1], torch.full((2,), sigma / 2, dtype=torch.float64))
    assert score.nfe == 1


def test_a_centered_ve_network_and_its_sigma_view_keep_the_data_scale():
    net = _GaussianVEScore(mean=0.2, var=0.04, centered=True)
    score = make_denoiser("score_sde_ve", net, VESchedule(0.02, 100.0), (3, 4, 4))
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(score(y, 3.0), -(y - 0.2) / (0.04 + 9.0), rtol=1e-12, atol=0)
    # Tweedie: D(y; sigma) = y + sigma^2 score = (0.04 y + sigma^2 0.2) / (0.04 + sigma^2).
    D = score.as_sigma_denoiser()(y, 3.0)
    torch.testing.assert_close(D, (0.04 * y + 9.0 * 0.2) / 9.04, rtol=1e-12, atol=1e-15)


class _GaussianVPEps(nn.Module):
    """E[z | x_t] of score-SDE's VP SDE for x0 ~ N(0, var I), read at labels = 999 t."""

    def __init__(self, sde: VPSDE, var: float):
        super().__init__()
        self.sde, self.var, self.centered = sde, var, True
        self.labels: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.labels.append(labels)
        t = labels.double().view(-1, 1, 1, 1) / 999
        s2 = torch.exp(-self.sde.integral(t))
        return (torch.sqrt(1 - s2) * x.double() / (s2 * self.var + 1 - s2)).to(x.dtype)


def _vp_time_view(denoiser, **grid_options):
    options = {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3, **grid_options}
    return view_for("vp_time", denoiser, "vp_sde", 4, options, variance=lambda: "unused")


@pytest.mark.parametrize("t", [1e-5, 1e-3, 0.25, 1.0])
def test_a_vp_network_is_read_as_minus_eps_over_std(t):
    sde = VPSDE(0.1, 20.0)
    net = _GaussianVPEps(sde, var=0.3)
    denoiser = make_denoiser("score_sde_vp", net, sde, (3, 4, 4))
    score, times = _vp_time_view(denoiser)
    torch.testing.assert_close(times, torch.tensor([1.0, 2 / 3 + 1e-3 / 3, 1 / 3 + 2e-3 / 3, 1e-3, 0.0],
                                                   dtype=torch.float64))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s2 = math.exp(-float(sde.integral(t)))
    # x_t ~ N(0, (s^2 var + 1 - s^2) I): score-SDE's -net / std(t) is this Gaussian's exact score. The network
    # is read at 999 t itself, as score-SDE reads it, so only its float32 output rounds.
    torch.testing.assert_close(score(x, t), -x / (s2 * 0.3 + 1 - s2), rtol=1e-6, atol=0)
    torch.testing.assert_close(net.labels[-1], torch.full((2,), 999 * t), rtol=1e-7, atol=0)
    assert denoiser.nfe == score.nfe == 1
    # D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2)): E[x0 | x] of the Gaussian in EDM's sigma space.
    sigma = math.sqrt(1 / s2 - 1)
    torch.testing.assert_close(as_sigma(denoiser)(x, sigma), 0.3 * x / (0.3 + sigma**2), rtol=1e-5, atol=1e-6)


def test_a_vp_time_view_on_another_sde_than_the_models_is_refused():
    sde = VPSDE(0.1, 20.0)
    denoiser = make_denoiser("score_sde_vp", _GaussianVPEps(sde, var=0.3), sde, (3, 4, 4))
    with pytest.raises(ValueError, match=r"beta_min=0.1, beta_max=19.9 is not the model's \(beta_min=0.1, "
                                         r"beta_max=20.0\)"):
        _vp_time_view(denoiser, beta_max=19.9)


def test_a_vp_network_on_data_in_zero_one_is_refused():
    net = _GaussianVPEps(VPSDE(0.1, 20.0), var=0.3)
    net.centered = False
    with pytest.raises(ValueError, match="its network option 'centered' must be true"):
        make_denoiser("score_sde_vp", net, VPSDE(0.1, 20.0), (3, 4, 4))


@pytest.mark.parametrize("family", ["score_sde_ve", "score_sde_vp"])
def test_a_score_sde_family_loads_released_weights_only(family):
    model = {"dataset": "cifar10", "family": family, "network": {"type": "score_sde_ncsnpp"},
             "schedule": {"name": "ve", "sigma_min": 0.02, "sigma_max": 100.0} if family == "score_sde_ve"
             else {"name": "vp_sde", "beta_min": 0.1, "beta_max": 20.0},
             "train": {"steps": 1}}
    with pytest.raises(ValueError, match=rf"'models.m.train': family '{family}' has no training objective here"):
        check_model("m", model)
    del model["train"]
    check_model("m", model)
