"""score-SDE's discrete-time networks (ve/cifar10_ncsnpp, vp/cifar10_ddpmpp, vp/ddpm/cifar10) against Gaussians
whose scores at the discrete levels are closed forms, and its VP ancestral sampler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.core.noise import NoiseSource
from bench.core.spaces import view_for
from bench.core.vp_schedule import VPSDE
from bench.families import compatible_samplers, make_denoiser
from bench.methods.ncsn import VESchedule
from bench.nets.score_sde_ncsnpp import smld_sigmas
from bench.samplers import get_sampler

torch.set_num_threads(1)
VAR = 0.3
N = 1000


class _GaussianIndexedVEScore(nn.Module):
    """A positional-embedding VE network on [0, 1] data: the exact score of N(0.6, 0.01) + sigmas[index] z."""

    def __init__(self):
        super().__init__()
        self.centered, self.embedding_type = False, "positional"
        self.sigma_min, self.sigma_max, self.num_scales = 0.01, 50.0, N
        self.register_buffer("sigmas", smld_sigmas(0.01, 50.0, N))
        self.seen: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
        self.seen.append(time_cond)
        sigma = self.sigmas[time_cond.long()].view(-1, 1, 1, 1)
        return -(x - 0.6) / (0.01 + sigma**2)


def test_a_discrete_ve_network_takes_the_index_of_each_level_of_the_pc_grid():
    net = _GaussianIndexedVEScore()
    denoiser = make_denoiser("score_sde_ve", net, VESchedule(0.02, 100.0), (3, 4, 4))
    score, grid = view_for("levels", denoiser, "ve", N, {"sigma_min": 0.02, "sigma_max": 100.0},
                           variance=lambda: "unused")
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for k in (0, 1, 500, N - 1):
        sigma = float(score.sigmas[grid[k]])
        # y = 2 x - 1 ~ N(0.2, 0.04): its exact score at level sigma (twice the network's own level).
        torch.testing.assert_close(score(y, sigma), -(y - 0.2) / (0.04 + sigma**2), rtol=1e-12, atol=0)
        # Ascending level k is entry N - 1 - k of the network's descending table: round((1 - t)(N - 1)) at
        # score-SDE's t = linspace(1, eps, N) (models/utils.py L167-170), an int64 label.
        assert net.seen[-1].dtype == torch.int64 and net.seen[-1].tolist() == [N - 1 - k] * 2


def test_a_level_off_a_discrete_ve_networks_table_is_refused():
    denoiser = make_denoiser("score_sde_ve", _GaussianIndexedVEScore(), VESchedule(0.02, 100.0), (3, 4, 4))
    # K - 1 = 9 divides N - 1 = 999: ten levels are table entries; seven are not (999 / 6 is no integer).
    score, grid = view_for("levels", denoiser, "ve", 10, {"sigma_min": 0.02, "sigma_max": 100.0},
                           variance=lambda: "unused")
    y = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    score(y, float(score.sigmas[grid[1]]))
    assert denoiser.net.seen[-1].tolist() == [N - 1 - 111]
    score, grid = view_for("levels", denoiser, "ve", 7, {"sigma_min": 0.02, "sigma_max": 100.0},
                           variance=lambda: "unused")
    with pytest.raises(ValueError, match=r"level sigma=0.0413\d+ \(on the network's data scale\) is not one of the "
                                         r"discrete network's 1000 levels \[0.01 .. 50\]: sample it on that table "
                                         r"\(K = 1000 levels of the model's own range\)"):
        score(y, float(score.sigmas[grid[1]]))


def test_the_level_index_comes_from_the_configs_table_not_the_networks_buffer():
    # score-SDE computes the label from t and N (models/utils.py L167-170); a buffer of other values changes
    # what the network divides by, not which index it is given.
    net = _GaussianIndexedVEScore()
    net.sigmas.copy_(torch.linspace(-1.0, 1.0, N, dtype=torch.float64))
    denoiser = make_denoiser("score_sde_ve", net, VESchedule(0.02, 100.0), (3, 4, 4))
    score, grid = view_for("levels", denoiser, "ve", N, {"sigma_min": 0.02, "sigma_max": 100.0},
                           variance=lambda: "unused")
    score(torch.zeros(1, 3, 4, 4, dtype=torch.float64), float(score.sigmas[grid[3]]))
    assert net.seen[-1].tolist() == [N - 1 - 3]


def _alpha_bars() -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64), 0)


class _GaussianDDPMEps(nn.Module):
    """E[eps | x_i] of DDPM's chain for x_0 ~ N(0, VAR I), at i = floor(label): sqrt(1 - a_i) x / (a_i VAR + 1 - a_i)."""

    def __init__(self):
        super().__init__()
        self.centered = True
        self.labels: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.labels.append(labels)
        a = _alpha_bars()[labels.long()].view(-1, *([1] * (x.dim() - 1)))
        return (torch.sqrt(1 - a) * x.double() / (a * VAR + 1 - a)).to(x.dtype)


def _vp_view(denoiser, K: int = N):
    options = {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}
    return view_for("vp_discrete", denoiser, "vp_sde", K, options, variance=lambda: "unused")


def test_a_discrete_vp_network_is_read_as_minus_eps_over_its_tables_std():
    net = _GaussianDDPMEps()
    denoiser = make_denoiser("score_sde_vp_discrete", net, VPSDE(0.1, 20.0), (3, 4, 4))
    score, times = _vp_view(denoiser)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for k in (0, 1, 400, N - 1):
        t = float(times[k])
        a = float(_alpha_bars()[N - 1 - k])
        # score-SDE's t = linspace(1, 1e-3, N) visits DDPM step N - 1 - k: the exact score of its marginal, up to
        # score-SDE's float32 table of sqrt(1 - a) (sde_lib.py L125-L129; 8e-5 relative off at step 0), kept.
        std32 = float(torch.sqrt(1 - torch.cumprod(1 - torch.linspace(0.1 / N, 20.0 / N, N), 0))[N - 1 - k])
        exact = -x / (a * VAR + 1 - a)
        torch.testing.assert_close(score(x, t), exact * math.sqrt(1 - a) / std32, rtol=1e-6, atol=0)
        torch.testing.assert_close(score(x, t), exact, rtol=1e-4, atol=0)
        # labels are 999 t itself, not the integer step (models/utils.py L155).
        torch.testing.assert_close(net.labels[-1], torch.full((2,), 999 * t), rtol=1e-7, atol=0)
    assert denoiser.nfe == score.nfe == 8


class _Zeros:
    def normal(self, k: int, extra: int = 0) -> torch.Tensor:
        return torch.zeros(())


def test_ancestral_sampling_steps_through_ddpms_betas_from_the_last():
    denoiser = make_denoiser("score_sde_vp_discrete", _GaussianDDPMEps(), VPSDE(0.1, 20.0), (1, 1, 2))
    score, times = _vp_view(denoiser)
    x = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    out = get_sampler("vp_ancestral")(score, x, times, noise=_Zeros(), denoise=True)
    betas, a = torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64), _alpha_bars()
    factor = 1.0
    for i in range(N - 1, -1, -1):
        # (x + b score) / sqrt(1 - b) with score = -x / (a_i VAR + 1 - a_i) (sampling.py L225-L233).
        b = float(betas[i])
        factor *= (1 - b / float(a[i] * VAR + 1 - a[i])) / math.sqrt(1 - b)
    torch.testing.assert_close(out, torch.full_like(x, factor), rtol=1e-5, atol=0)


def test_ancestral_sampling_of_the_exact_score_reaches_the_data_law():
    denoiser = make_denoiser("score_sde_vp_discrete", _GaussianDDPMEps(), VPSDE(0.1, 20.0), (1, 1, 2))
    score, times = _vp_view(denoiser)
    noise = NoiseSource(torch.arange(20000), (1, 1, 2), torch.float64, "cpu")
    out = get_sampler("vp_ancestral")(score, score.prior(noise, times), times, noise=noise)
    assert float(out.var()) == pytest.approx(VAR, rel=0.04)


def test_the_discrete_vp_family_takes_its_configs_sampler_only():
    assert compatible_samplers("score_sde_vp_discrete") == ["vp_ancestral"]
    assert "vp_ancestral" not in compatible_samplers("edm")
