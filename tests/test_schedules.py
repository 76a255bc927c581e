"""Schedules, alpha-bar, the posterior q(x_s | x_t, x_0) and the timestep <-> sigma conversion."""

import math

import pytest
import torch

from bench.core.schedules import (
    DiscreteSchedule,
    alpha_bar_of_sigma,
    cosine_betas,
    linear_betas,
    posterior_coefficients,
    sigma_of_alpha_bar,
    timestep_of_sigma,
)


def test_linear_betas_ddpm_endpoints_and_rescaling():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    b4000 = linear_betas(4000)
    assert b4000[0].item() == pytest.approx(0.25e-4) and b4000[-1].item() == pytest.approx(0.005)


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_cosine_alpha_bar_matches_closed_form(T):
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = DiscreteSchedule(cosine_betas(T)).alpha_bars
    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    unclipped = cosine_betas(T) < 0.999
    assert torch.allclose(abar[unclipped], expected[unclipped], rtol=1e-10, atol=1e-14)
    assert cosine_betas(T).max().item() <= 0.999


def test_alpha_bar_is_cumulative_product():
    sch = DiscreteSchedule.named("linear", 50)
    expected = [math.prod(1 - b for b in sch.betas[: n + 1].tolist()) for n in range(50)]
    assert torch.allclose(sch.alpha_bars, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_posterior_equals_gaussian_conditioning():
    """q(x_s | x_t, x0) from the joint Gaussian of (x_s, x_t) given x0, for many (s, t) pairs."""
    abar = DiscreteSchedule.named("linear", 1000).alpha_bars
    for s, t in [(0, 1), (10, 500), (499, 500), (0, 999), (250, 750)]:
        a_s, a_t = abar[s].item(), abar[t].item()
        alpha_ts = a_t / a_s
        cov_st = math.sqrt(alpha_ts) * (1 - a_s)  # Cov(x_s, x_t | x0)
        var_t = 1 - a_t
        c0, ct, var = posterior_coefficients(torch.tensor(a_s, dtype=torch.float64), torch.tensor(a_t, dtype=torch.float64))
        x0, xt = 0.3, -1.2
        mean = math.sqrt(a_s) * x0 + cov_st / var_t * (xt - math.sqrt(a_t) * x0)
        assert (c0 * x0 + ct * xt).item() == pytest.approx(mean, rel=1e-12)
        assert var.item() == pytest.approx((1 - a_s) - cov_st**2 / var_t, rel=1e-9)


def test_posterior_of_one_step_is_ddpm_beta_tilde():
    sch = DiscreteSchedule.named("linear", 1000)
    abar, betas = sch.alpha_bars, sch.betas
    n = torch.arange(1, 1000)
    _, _, var = posterior_coefficients(abar[n - 1], abar[n])
    assert torch.allclose(var, (1 - abar[n - 1]) / (1 - abar[n]) * betas[n], rtol=1e-10)


def test_sub_chain_keeps_alpha_bar_of_kept_steps():
    sch = DiscreteSchedule.named("cosine", 100)
    grid = torch.tensor([0, 9, 40, 99])
    assert torch.allclose(sch.sub_chain(grid).alpha_bars, sch.alpha_bars[grid], rtol=1e-12)


def test_sigma_conversion_round_trip():
    sch = DiscreteSchedule.named("linear", 1000)
    sigma = sigma_of_alpha_bar(sch.alpha_bars)
    assert torch.allclose(alpha_bar_of_sigma(sigma), sch.alpha_bars, rtol=1e-12)
    n = torch.tensor([0, 1, 17, 500, 999])
    assert torch.allclose(timestep_of_sigma(sch, sigma[n]), n.to(torch.float64), atol=1e-9)
    mid = torch.exp((torch.log(sigma[3]) + torch.log(sigma[4])) / 2)
    assert timestep_of_sigma(sch, mid).item() == pytest.approx(3.5, abs=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_T_is_rejected(bad):
    with pytest.raises(ValueError, match="T="):
        linear_betas(bad)


def test_unknown_schedule_names_allowed():
    with pytest.raises(ValueError, match=r"'quadratic' is not one of \['linear', 'cosine'\]"):
        DiscreteSchedule.named("quadratic", 10)
