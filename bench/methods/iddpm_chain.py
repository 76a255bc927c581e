"""improved-diffusion's chain as its checkpoints were trained on it: a discrete schedule plus ``rescale_timesteps``.

improved_diffusion ``gaussian_diffusion.py`` ``_scale_timesteps`` (openai/improved-diffusion @1bc7bbb): with
``rescale_timesteps`` (script_util default True) the network sees t = n * 1000 / T for step index n, else n itself;
the class-conditional ImageNet-64 (270M) and LSUN checkpoints were trained with False (README DIFFUSION_FLAGS).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.schedules import DiscreteSchedule


@dataclass(frozen=True)
class IDDPMChain(DiscreteSchedule):
    """A discrete chain whose network was trained on t = n * 1000 / T (``rescale_timesteps``) or on n."""

    rescale_timesteps: bool = True


def network_time_scale(schedule: DiscreteSchedule) -> float:
    """What the network sees per step index: 1000 / T when the chain rescales its timesteps (the default), else 1."""
    T = schedule.T
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T={T!r} must be a positive integer")
    return 1000.0 / T if getattr(schedule, "rescale_timesteps", True) else 1.0
