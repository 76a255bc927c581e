"""score-SDE's own VP networks (Song et al. 2021, DDPM++ / DDPM continuous): score = -net(x, 999 t) / std(t)."""

from __future__ import annotations

from torch import nn

from bench.core.vp_schedule import VPSDE
from bench.families.spec import FamilySpec
from bench.methods.score_sde import ScoreSdeVPDenoiser


def vp_sde_schedule(schedule: dict) -> VPSDE:
    """beta(t) = beta_min + t (beta_max - beta_min) (score-SDE sde_lib.VPSDE; its configs: 0.1, 20)."""
    return VPSDE(schedule["beta_min"], schedule["beta_max"])


def score_sde_vp_denoise(net: nn.Module, schedule: VPSDE, data_shape=None, noise=None) -> ScoreSdeVPDenoiser:
    """The eps network as D(x; sigma) (EDM's VPPrecond), and in VP time as score-SDE reads it."""
    if data_shape is None:
        raise ValueError("the score_sde_vp family's denoiser needs the data shape (channels, height, width)")
    return ScoreSdeVPDenoiser(net, schedule, tuple(data_shape))


FAMILY = FamilySpec(
    name="score_sde_vp",
    schedules={"vp_sde": vp_sde_schedule},
    # Released weights only (score_sde_checkpoints): score-SDE's training is not reimplemented here.
    losses={},
    denoiser=score_sde_vp_denoise,
    # Its VE view (score = (D - x) / sigma^2) serves the level samplers, its own VP-time score score-SDE's VP SDE.
    spaces=("sigma", "levels", "vp_time"),
    continuous=True,
)
