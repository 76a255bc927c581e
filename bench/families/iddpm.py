"""iDDPM (Nichol & Dhariwal 2021): an eps network with a learned-range variance, trained with L_hybrid or L_vlb."""

from __future__ import annotations

from torch import nn

from bench.core.schedules import DiscreteSchedule
from bench.families.ddpm import discrete_schedule, simple_objective
from bench.families.spec import FamilySpec
from bench.methods.iddpm import LearnedVarianceDenoiser, hybrid_objective, vlb_objective
from bench.methods.iddpm_chain import IDDPMChain


def iddpm_chain(schedule: dict) -> IDDPMChain:
    """The config's linear or cosine chain with its ``rescale_timesteps`` (default True, improved_diffusion's)."""
    return IDDPMChain(discrete_schedule(schedule).betas, bool(schedule.get("rescale_timesteps", True)))


def learned_variance_denoiser(
    net: nn.Module, schedule: DiscreteSchedule, data_shape=None, noise=None
) -> LearnedVarianceDenoiser:
    """The [eps, v] network's eps and x0, with its v for the iddpm sampler's variance (iDDPM Eq. 15), fed the
    time the chain's network was trained on (``rescale_timesteps``)."""
    return LearnedVarianceDenoiser(net, schedule)


FAMILY = FamilySpec(
    name="iddpm",
    schedules={"linear": iddpm_chain, "cosine": iddpm_chain},
    schedule_options=("rescale_timesteps",),
    losses={"simple": simple_objective, "hybrid": hybrid_objective, "vlb": vlb_objective},
    denoiser=learned_variance_denoiser,
    spaces=("discrete", "learned_variance", "sigma"),
    conditional=True,
)
