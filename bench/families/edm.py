"""EDM (Karras et al. 2022): a preconditioned denoiser D(x; sigma), ours or an official network's."""

from __future__ import annotations

from functools import partial

from torch import nn

from bench.families.spec import FamilySpec
from bench.methods.edm import P_MEAN, P_STD, EDMNetworkDenoiser, EDMSchedule, edm_family_loss
from bench.nets.edm_precond import Preconditioner
from bench.runtime.speed import unwrap_network


def edm_schedule(schedule: dict) -> EDMSchedule:
    """The sigma range and sigma_data (default 0.5, EDM Table 1) of the config's ``schedule:`` entry."""
    return EDMSchedule(schedule["sigma_min"], schedule["sigma_max"], schedule.get("sigma_data", 0.5))


def edm_objective(model_cfg: dict, max_level: int):
    """EDM's weighted denoising loss with ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)."""
    loss = model_cfg.get("loss", {})
    return partial(edm_family_loss, P_mean=loss.get("P_mean", P_MEAN), P_std=loss.get("P_std", P_STD))


def edm_denoiser(net: nn.Module, schedule: EDMSchedule, data_shape=None, noise=None) -> EDMNetworkDenoiser:
    """D(x; sigma) of the network, behind the schedule's preconditioning unless it carries its own."""
    if data_shape is None:
        raise ValueError("the edm family's denoiser needs the data shape (channels, height, width)")
    # An official EDM network (converted pickle) carries its own preconditioning; ours is a bare backbone.
    # Either may come wrapped by speed options (bench.runtime.speed), which keep its attributes.
    if isinstance(unwrap_network(net), Preconditioner):
        return EDMNetworkDenoiser(net)
    return EDMNetworkDenoiser(schedule.precond(net, tuple(data_shape)))


FAMILY = FamilySpec(
    name="edm",
    schedules={"edm": edm_schedule},
    losses={"edm": edm_objective},
    denoiser=edm_denoiser,
    # Its VE view (score = (D - x) / sigma^2) serves the level samplers, its VP view score-SDE's VP SDE.
    spaces=("sigma", "levels", "vp_time"),
    continuous=True,
    conditional=True,
)
