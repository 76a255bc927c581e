"""score-SDE's sub-VP SDE: its coefficients, its networks' adapter, samplers and PF-ODE likelihood against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.core.denoiser import as_sigma
from bench.core.noise import NoiseSource
from bench.core.spaces import view_for
from bench.core.vp_schedule import VPSDE, SubVPSDE
from bench.families import compatible_samplers, make_denoiser
from bench.metrics.ode_nll import ode_nll
from bench.samplers.vp_sde import euler_maruyama, probability_flow

torch.set_num_threads(1)
SDE = SubVPSDE(0.1, 20.0)
VAR = 0.3


def _integral(t: float) -> float:
    return 0.1 * t + 0.5 * 19.9 * t**2


@pytest.mark.parametrize("t", [1e-5, 0.1, 0.5, 1.0])
def test_sub_vp_coefficients_are_sde_libs(t):
    B = _integral(t)
    # sde_lib.subVPSDE: mean exp(-B / 2) x, std 1 - exp(-B) (L193-L195), diffusion^2 beta (1 - exp(-2 B)) (L188-L189).
    assert float(SDE.scale(t)) == pytest.approx(math.exp(-B / 2), rel=1e-14)
    assert float(SDE.std(t)) == pytest.approx(1 - math.exp(-B), rel=1e-12)
    assert float(SDE.variance(t)) == pytest.approx((1 - math.exp(-B)) ** 2, rel=1e-12)
    assert float(SDE.beta(t) * SDE.discount(t)) == pytest.approx((0.1 + 19.9 * t) * (1 - math.exp(-2 * B)), rel=1e-12)
    assert float(SDE.sigma(t)) == pytest.approx((1 - math.exp(-B)) / math.exp(-B / 2), rel=1e-12)
    assert float(SDE.time_of_sigma(SDE.sigma(t))) == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_sub_vp_variance_solves_the_sdes_moment_equation_and_its_pf_ode_is_edms(t):
    """From x_0 = 0, dV/dt = -beta V + g^2; and g^2 = 2 s^2 sigma sigma' (EDM Eq. 4's ODE is this SDE's flow)."""
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    (dV,) = torch.autograd.grad(SDE.variance(tt), tt)
    g2 = SDE.beta(t) * SDE.discount(t)
    torch.testing.assert_close(dV, -SDE.beta(t) * SDE.variance(t) + g2, rtol=1e-10, atol=0)
    tt = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    sigma = SDE.sigma(tt)
    (dsigma,) = torch.autograd.grad(sigma, tt)
    torch.testing.assert_close(2 * SDE.scale(t) ** 2 * sigma.detach() * dsigma, g2, rtol=1e-10, atol=0)


class _GaussianSubVPEps(nn.Module):
    """E[z | x_t] of the sub-VP SDE for x_0 ~ N(0, VAR I), read at labels = 999 t: std x / (s^2 VAR + std^2)."""

    def __init__(self):
        super().__init__()
        self.centered = True
        self.labels: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.labels.append(labels)
        t = labels.double().view(-1, *([1] * (x.dim() - 1))) / 999
        std, s2 = SDE.std(t), SDE.scale(t) ** 2
        return (std * x.double() / (s2 * VAR + std**2)).to(x.dtype)


def _marginal_var(t: float) -> float:
    return float(SDE.scale(t) ** 2 * VAR + SDE.variance(t))


def _vp_time_view(denoiser, K: int = 4, **grid_options):
    options = {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3, **grid_options}
    return view_for("vp_time", denoiser, "vp_sde", K, options, variance=lambda: "unused")


@pytest.mark.parametrize("t", [1e-5, 1e-3, 0.25, 1.0])
def test_a_sub_vp_network_is_read_as_minus_eps_over_its_std(t):
    net = _GaussianSubVPEps()
    denoiser = make_denoiser("score_sde_subvp", net, SDE, (3, 4, 4))
    score, _ = _vp_time_view(denoiser)
    assert type(score.sde) is SubVPSDE
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    # score-SDE's -net / std(t) with the sub-VP std 1 - s^2 (not its square root): the Gaussian's exact score.
    torch.testing.assert_close(score(x, t), -x / _marginal_var(t), rtol=1e-6, atol=0)
    torch.testing.assert_close(net.labels[-1], torch.full((2,), 999 * t), rtol=1e-7, atol=0)
    assert denoiser.nfe == score.nfe == 1


@pytest.mark.parametrize("t", [1e-5, 0.05, 0.5, 1.0])
def test_the_sub_vp_sigma_view_is_the_gaussians_posterior_mean(t):
    net = _GaussianSubVPEps()
    D = as_sigma(make_denoiser("score_sde_subvp", net, SDE, (3, 4, 4)))
    sigma = float(SDE.sigma(t))
    assert D.sigma_min == pytest.approx(float(SDE.sigma(1e-5)), rel=1e-12)
    assert D.sigma_max == pytest.approx(float(SDE.sigma(1.0)), rel=1e-12)
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    # y = x_t / s = x_0 + sigma z: E[x_0 | y] = VAR y / (VAR + sigma^2); the network is read at s y and 999 t(sigma).
    torch.testing.assert_close(D(y, sigma).double(), VAR * y / (VAR + sigma**2), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(net.labels[-1].double(), torch.full((2,), 999 * t, dtype=torch.float64),
                               rtol=2e-6, atol=1e-6)


def test_a_sub_vp_time_view_on_other_betas_is_refused_and_ancestral_sampling_does_not_apply():
    denoiser = make_denoiser("score_sde_subvp", _GaussianSubVPEps(), SDE, (3, 4, 4))
    with pytest.raises(ValueError, match=r"beta_min=0.1, beta_max=19.9 is not the model's"):
        _vp_time_view(denoiser, beta_max=19.9)
    assert "vp_ancestral" not in compatible_samplers("score_sde_subvp")
    with pytest.raises(ValueError, match="the sub-VP SDE has no discrete DDPM betas"):
        SDE.discrete_beta(0.5, 1000)


class _Zeros:
    def normal(self, k: int, extra: int = 0) -> torch.Tensor:
        return torch.zeros(())


def test_sub_vp_euler_maruyama_steps_are_its_reverse_sde_and_reach_the_data_law():
    net = _GaussianSubVPEps()
    score, grid = _vp_time_view(make_denoiser("score_sde_subvp", net, SDE, (1, 1, 2)), K=500)
    # Without noise one step is x (1 + h beta / 2 - h beta c / V(t)), c = 1 - exp(-2 int beta).
    x = torch.ones(1, 1, 1, 2, dtype=torch.float64)
    out = euler_maruyama(score, x, grid, noise=_Zeros(), denoise=False)
    h, factor = 1 / 500, 1.0
    for t in grid[:-1].tolist():
        beta, c = 0.1 + 19.9 * t, 1 - math.exp(-2 * _integral(t))
        factor *= 1 + h * beta / 2 - h * beta * c / _marginal_var(t)
    torch.testing.assert_close(out, torch.full_like(x, factor), rtol=1e-5, atol=0)
    # With noise the chain ends near N(0, VAR).
    n = 20000
    noise = NoiseSource(torch.arange(n), (1, 1, 2), torch.float64, "cpu")
    samples = euler_maruyama(score, noise.latent(), grid, noise=noise)
    assert float(samples.var()) == pytest.approx(VAR, rel=0.04)


@pytest.mark.parametrize("denoise", [False, True])
def test_sub_vp_probability_flow_is_the_gaussians_linear_flow(denoise):
    """For N(0, VAR I) data the sub-VP PF-ODE maps x_1 to sqrt(V(eps) / V(1)) x_1; denoising adds score-SDE's
    Euler reverse-diffusion step of N = 1000 (subVPSDE keeps SDE.discretize)."""
    score, grid = _vp_time_view(make_denoiser("score_sde_subvp", _GaussianSubVPEps(), SDE, (1, 1, 2)), K=10)
    x = torch.randn(3, 1, 1, 2, dtype=torch.float64)
    out = probability_flow(score, x, grid, noise=None, rtol=1e-8, atol=1e-8, denoise=denoise)
    want = math.sqrt(_marginal_var(1e-3) / _marginal_var(1.0)) * x
    if denoise:
        beta, c = 0.1 + 19.9 * 1e-3, 1 - math.exp(-2 * _integral(1e-3))
        want = (1 + beta / 2000) * want - beta * c / 1000 * want / _marginal_var(1e-3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_the_pf_ode_likelihood_of_a_gaussian_under_sub_vp_is_its_closed_form():
    """-log N(x; 0, VAR I) in bits/dim, through the sub-VP network's sigma view (its own flow, see SubVPSDE)."""
    denoiser = make_denoiser("score_sde_subvp", _GaussianSubVPEps(), SDE, (1, 2, 2))
    x = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * math.sqrt(VAR)
    out = ode_nll(denoiser.as_score(), x, torch.arange(4), estimator="exact", rtol=1e-7, atol=1e-7)
    d = 4
    exact = (0.5 * (x.flatten(1) ** 2).sum(1) / VAR + 0.5 * d * math.log(2 * math.pi * VAR)) / (d * math.log(2))
    torch.testing.assert_close(out["bpd"], exact, rtol=0, atol=2e-4)
    assert out["sigma_min"] == pytest.approx(float(SDE.sigma(1e-5)), rel=1e-9)


def test_the_vp_sdes_coefficients_are_unchanged_by_the_sub_vp_generalisation():
    vp = VPSDE(0.1, 20.0)
    B = _integral(0.4)
    assert vp.discount(0.4) == 1.0
    assert float(vp.std(0.4)) == pytest.approx(math.sqrt(1 - math.exp(-B)), rel=1e-14)
    a, b = vp.reverse_diffusion(1e-3, 1000)
    assert (a, b) == (2.0 - math.sqrt(1.0 - vp.discrete_beta(1e-3, 1000)), vp.discrete_beta(1e-3, 1000))
