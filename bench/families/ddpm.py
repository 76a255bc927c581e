"""DDPM (Ho et al. 2020): an eps-prediction network on a discrete VP chain, trained with L_simple."""

from __future__ import annotations

import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.families.spec import FamilySpec
from bench.methods.iddpm import hybrid_objective


def discrete_schedule(schedule: dict) -> DiscreteSchedule:
    """The T-step beta schedule named by a config's ``schedule:`` entry (linear or cosine)."""
    return DiscreteSchedule.named(schedule["name"], schedule["T"])


def simple_loss(net: nn.Module, schedule: DiscreteSchedule, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """L_simple = E ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (DDPM Eq. 14)."""
    # Draws come from the CPU generator, so a seeded run trains on the same noise on any device.
    n = torch.randint(0, schedule.T, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen).to(x0.device)
    abar = schedule.alpha_bars[n].to(x0).view(-1, *([1] * (x0.dim() - 1)))
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    return ((net(xt, n.to(x0)) - eps) ** 2).mean()


def simple_objective(model_cfg: dict, max_level: int):
    """L_simple, which takes no options."""
    return simple_loss


def eps_denoiser(net: nn.Module, schedule: DiscreteSchedule, data_shape=None, noise=None) -> DiscreteEpsDenoiser:
    """eps_theta(x_n, n) with x0 = (x_n - sqrt(1 - abar_n) eps) / sqrt(abar_n) (DDPM Eq. 15)."""
    return DiscreteEpsDenoiser(net, schedule)


DISCRETE_SCHEDULES = {"linear": discrete_schedule, "cosine": discrete_schedule}

FAMILY = FamilySpec(
    name="ddpm",
    schedules=DISCRETE_SCHEDULES,
    losses={"simple": simple_objective, "hybrid": hybrid_objective},
    denoiser=eps_denoiser,
    # The sigma view is the discrete chain's (EDM Table 1, VP column), so EDM's samplers apply too.
    spaces=("discrete", "sigma"),
)
