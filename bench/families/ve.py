"""NCSN / score-SDE VE (Song & Ermon 2019, 2020; Song et al. 2021): a noise-conditional score on a sigma range."""

from __future__ import annotations

from torch import nn

from bench.families.spec import FamilySpec
from bench.methods.ncsn import VENetworkScore, VESchedule, dsm_loss, ssm_loss


def ve_schedule(schedule: dict) -> VESchedule:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t on the config's range."""
    return VESchedule(schedule["sigma_min"], schedule["sigma_max"])


def ve_score(net: nn.Module, schedule: VESchedule, data_shape=None, noise=None) -> VENetworkScore:
    """The score F(x, t(sigma)) / sigma, read as levels by NCSN's samplers and as D(x; sigma) by EDM's."""
    return VENetworkScore(net, schedule)


FAMILY = FamilySpec(
    name="ve",
    schedules={"ve": ve_schedule},
    losses={"dsm": lambda model_cfg, max_level: dsm_loss, "ssm": lambda model_cfg, max_level: ssm_loss},
    denoiser=ve_score,
    # EDM's samplers read it through D(x; sigma) = x + sigma^2 score (EDM Table 2, VE column).
    spaces=("levels", "sigma"),
    continuous=True,
)
