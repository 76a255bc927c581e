"""score-SDE's sub-VP networks (Song et al. 2021, Eq. 12; subvp/*_continuous): score = -net(x, 999 t) / std(t)."""

from __future__ import annotations

from torch import nn

from bench.core.vp_schedule import SubVPSDE
from bench.families.spec import FamilySpec
from bench.methods.score_sde import ScoreSdeSubVPDenoiser


def subvp_sde_schedule(schedule: dict) -> SubVPSDE:
    """beta(t) = beta_min + t (beta_max - beta_min) (sde_lib.subVPSDE; its configs: 0.1, 20)."""
    return SubVPSDE(schedule["beta_min"], schedule["beta_max"])


def score_sde_subvp_denoise(net: nn.Module, schedule: SubVPSDE, data_shape=None, noise=None) -> ScoreSdeSubVPDenoiser:
    """The eps network in sub-VP time (score-SDE's samplers) and as D(x; sigma) (the PF-ODE likelihood)."""
    if data_shape is None:
        raise ValueError("the score_sde_subvp family's denoiser needs the data shape (channels, height, width)")
    return ScoreSdeSubVPDenoiser(net, schedule, tuple(data_shape))


FAMILY = FamilySpec(
    name="score_sde_subvp",
    schedules={"subvp_sde": subvp_sde_schedule},
    # Released weights only (score_sde_checkpoints): score-SDE's training is not reimplemented here.
    losses={},
    denoiser=score_sde_subvp_denoise,
    # vp_time: score-SDE's samplers on the model's own sub-VP SDE (the vp_sde grid's times and betas).
    spaces=("sigma", "levels", "vp_time"),
    continuous=True,
)
