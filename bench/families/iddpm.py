"""iDDPM (Nichol & Dhariwal 2021): an eps network with a learned-range variance, trained with L_hybrid or L_vlb."""

from __future__ import annotations

from torch import nn

from bench.core.schedules import DiscreteSchedule
from bench.families.ddpm import DISCRETE_SCHEDULES, simple_objective
from bench.families.spec import FamilySpec
from bench.methods.iddpm import LearnedVarianceDenoiser, hybrid_objective, vlb_objective


def learned_variance_denoiser(
    net: nn.Module, schedule: DiscreteSchedule, data_shape=None, noise=None
) -> LearnedVarianceDenoiser:
    """The [eps, v] network's eps and x0, with its v for the iddpm sampler's variance (iDDPM Eq. 15)."""
    return LearnedVarianceDenoiser(net, schedule)


FAMILY = FamilySpec(
    name="iddpm",
    schedules=DISCRETE_SCHEDULES,
    losses={"simple": simple_objective, "hybrid": hybrid_objective, "vlb": vlb_objective},
    denoiser=learned_variance_denoiser,
    spaces=("discrete", "learned_variance", "sigma"),
    conditional=True,
)
