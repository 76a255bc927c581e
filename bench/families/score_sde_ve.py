"""score-SDE's own VE networks (Song et al. 2021, NCSN++ continuous): score = net(x, sigma) on their data scale."""

from __future__ import annotations

from torch import nn

from bench.families.spec import FamilySpec
from bench.families.ve import ve_schedule
from bench.methods.ncsn import VESchedule
from bench.methods.score_sde import ScoreSdeVEScore


def score_sde_ve_score(net: nn.Module, schedule: VESchedule, data_shape=None, noise=None) -> ScoreSdeVEScore:
    """The network's score on [-1, 1] data, read as levels (PC, Langevin) and as D(x; sigma) (EDM's samplers)."""
    return ScoreSdeVEScore(net, schedule)


FAMILY = FamilySpec(
    name="score_sde_ve",
    schedules={"ve": ve_schedule},
    # Released weights only (score_sde_checkpoints): score-SDE's training is not reimplemented here.
    losses={},
    denoiser=score_sde_ve_score,
    spaces=("levels", "sigma"),
    continuous=True,
)
