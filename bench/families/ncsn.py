"""NCSN / NCSNv2's released networks (Song & Ermon 2019, 2020): a score on the network's own table of levels."""

from __future__ import annotations

import inspect
import math

from torch import nn

from bench.families.spec import FamilySpec
from bench.families.ve import ve_schedule
from bench.methods.ncsn import VESchedule
from bench.methods.ncsn_levels import LEVEL_RTOL, NoiseConditionalScore
from bench.nets.factory import network_constructor
from bench.runtime.speed import unwrap_network


def check_ncsn_model(name: str, model: dict) -> None:
    """An NCSN / NCSNv2 network's table on [-1, 1] data must be the schedule's range, before any job builds it."""
    network = model["network"]
    kind = network["type"]
    if kind not in ("ncsnv1", "ncsnv2"):
        return
    defaults = inspect.signature(network_constructor(kind)).parameters
    option = {key: network.get(key, defaults[key].default if key in defaults else False)
              for key in ("sigma_begin", "sigma_end", "rescaled", "logit_transform")}
    # NCSNv2 models/ncsnv2.py L76-77, NCSN models/cond_refinenet_dilated.py L399-400: without rescaled / logit data
    # the network's levels are on [0, 1] images (NCSN has no rescaled option).
    scale = 1.0 if option["rescaled"] or option["logit_transform"] else 2.0
    for key, own in (("sigma_min", "sigma_end"), ("sigma_max", "sigma_begin")):
        want = scale * option[own]
        if not math.isclose(model["schedule"].get(key, math.nan), want, rel_tol=LEVEL_RTOL):
            raise ValueError(
                f"config key 'models.{name}.schedule.{key}': value {model['schedule'].get(key)!r} is not the "
                f"network's own level {want!r} ({scale:g} x network.{own} on [-1, 1] data); allowed: {want!r}"
            )


def ncsn_score(net: nn.Module, schedule: VESchedule, data_shape=None, noise=None) -> NoiseConditionalScore:
    """The network's level-indexed score on [-1, 1] data; the schedule's range must be its table's."""
    inner = unwrap_network(net)
    # NCSNv2 models/ncsnv2.py L76-77 (NCSN: always, cond_refinenet_dilated.py L399-400): without rescaled / logit
    # data the network takes [0, 1] images. NCSNv2's network divides by its level, NCSN's is the score itself.
    score = NoiseConditionalScore(net, inner.sigmas, data_range=(0.0, 1.0) if inner.centers_input else (-1.0, 1.0))
    for key, own in (("sigma_min", score.sigma_min), ("sigma_max", score.sigma_max)):
        given = getattr(schedule, key)
        if not math.isclose(given, own, rel_tol=LEVEL_RTOL):
            raise ValueError(
                f"schedule {key}={given!r} is not the network's own {own!r} (its table on [-1, 1] data: "
                f"twice NCSN's levels on [0, 1] data)"
            )
    return score


FAMILY = FamilySpec(
    name="ncsn",
    schedules={"ve": ve_schedule},
    # Released weights only (ncsn_cifar10, ncsnv2_cifar10): NCSN's training on fixed levels is not reimplemented here.
    losses={},
    denoiser=ncsn_score,
    # Level samplers only: the network is defined on its table's levels, not on a continuum of sigma.
    spaces=("levels",),
    check_model=check_ncsn_model,
)
