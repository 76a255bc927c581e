"""DDIM's encode-decode reconstruction (Table 2) against a Gaussian data law, whose exact eps is linear in x."""

import math

import pytest
import torch

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.data.gaussian_mixture import ExactEpsNetwork, GaussianMixture
from bench.methods.ddim_inversion import encode
from bench.metrics.recon import reconstruction_mse

MEAN, VAR = 0.3, 0.04
DDIM_ETA0 = {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0, "clip_x0": False}}


@pytest.fixture(scope="module")
def gaussian():
    sch = DiscreteSchedule.named("linear", 1000)
    law = GaussianMixture(
        torch.ones(1, dtype=torch.float64), torch.full((1, 1), MEAN, dtype=torch.float64),
        torch.full((1, 1, 1), VAR, dtype=torch.float64),
    )
    return sch, DiscreteEpsDenoiser(ExactEpsNetwork(law, sch, (1,)), sch)


def exact_eps(x: torch.Tensor, a: float) -> torch.Tensor:
    """E[eps | x_t = x] for x0 ~ N(MEAN, VAR): sqrt(1 - a) (x - sqrt(a) MEAN) / (a VAR + 1 - a)."""
    return math.sqrt(1 - a) * (x - math.sqrt(a) * MEAN) / (a * VAR + 1 - a)


def test_one_step_encode_decode_is_the_hand_computed_pair_of_euler_steps(gaussian):
    sch, den = gaussian
    n = 600
    a = float(sch.alpha_bars[n])
    x0 = torch.tensor([[-0.9], [0.0], [0.3], [0.8]], dtype=torch.float64)
    grid = torch.tensor([n])
    # Up: x_n = sqrt(a) x0 + sqrt(1 - a) eps(x0); down: x0' = (x_n - sqrt(1 - a) eps(x_n)) / sqrt(a).
    x_n = math.sqrt(a) * x0 + math.sqrt(1 - a) * exact_eps(x0, a)
    back = (x_n - math.sqrt(1 - a) * exact_eps(x_n, a)) / math.sqrt(a)
    torch.testing.assert_close(encode(den, x0, grid), x_n, rtol=0, atol=1e-12)
    mse, decoded = reconstruction_mse(den, DDIM_ETA0, x0, grid, torch.arange(4))
    torch.testing.assert_close(decoded, back, rtol=0, atol=1e-12)
    expected = ((((back + 1) / 2).clamp(0, 1) - (x0 + 1) / 2) ** 2).reshape(-1)
    torch.testing.assert_close(mse, expected, rtol=0, atol=1e-14)
    assert float(mse.max()) > 1e-4  # one Euler step each way is far from the identity


def test_reconstruction_error_shrinks_with_K_towards_the_exact_ode(gaussian):
    sch, den = gaussian
    x0 = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).reshape(-1, 1)
    errors = {}
    for K in (2, 10, 50, 250, 1000):
        mse, _ = reconstruction_mse(den, DDIM_ETA0, x0, time_grid("uniform", 1000, K), torch.arange(64))
        errors[K] = float(mse.mean())
    assert all(errors[a] > errors[b] for a, b in zip(list(errors), list(errors)[1:], strict=False)), errors
    # Each Euler pass errs by O(1 / K) per image on the exact ODE, so the mean square error falls as 1 / K^2.
    assert 8 < errors[250] / errors[1000] < 32, errors
    assert errors[1000] < 1e-4, errors


def test_a_repeated_timestep_is_a_zero_length_move_with_its_network_call(gaussian):
    sch, den = gaussian
    x0 = torch.tensor([[0.5], [-0.2]], dtype=torch.float64)
    once, twice = torch.tensor([0, 300, 700]), torch.tensor([0, 300, 300, 700])
    den.nfe = 0
    z = encode(den, x0, twice)
    assert den.nfe == 4
    torch.testing.assert_close(z, encode(den, x0, once), rtol=0, atol=0)
