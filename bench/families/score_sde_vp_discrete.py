"""score-SDE's discrete-time VP networks (vp/cifar10_ddpmpp, vp/ddpm/cifar10; training.continuous False).

score = -net(x, 999 t) / sqrt(1 - alphas_cumprod)[floor(999 t)] on the N = 1000 DDPM table (models/utils.py
L153-157). score-SDE's ODE sampler and likelihood read these same networks as continuous ones
(get_score_fn(continuous=True): sampling.py L436, L445; likelihood.py L61): the score_sde_vp family does that.
"""

from __future__ import annotations

from torch import nn

from bench.families.score_sde_vp import vp_sde_schedule
from bench.families.spec import FamilySpec
from bench.methods.score_sde import ScoreSdeDiscreteVPDenoiser


def score_sde_vp_discrete_denoise(net: nn.Module, schedule, data_shape=None, noise=None) -> ScoreSdeDiscreteVPDenoiser:
    """The eps network read on its DDPM table, in VP time."""
    return ScoreSdeDiscreteVPDenoiser(net, schedule)


FAMILY = FamilySpec(
    name="score_sde_vp_discrete",
    schedules={"vp_sde": vp_sde_schedule},
    # Released weights only (score_sde_checkpoints): score-SDE's training is not reimplemented here.
    losses={},
    denoiser=score_sde_vp_discrete_denoise,
    # Its configs' ancestral sampling (vp_discrete); the discrete score has no sigma view.
    spaces=("vp_discrete",),
)
