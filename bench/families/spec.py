"""What the pipeline knows about a model family, declared once in its module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilySpec:
    """A model family: how a config's network becomes a denoiser, and what it may be trained and sampled with.

    ``schedules``: schedule name -> builder of the schedule from the config's ``schedule:`` entry.
    ``losses``: loss name -> builder of the training objective ``(model_cfg, max_level) -> loss(net, schedule,
    x0, generator)``; the first is the default (none: the family's models come from released weights only).
    ``denoiser(net, schedule, data_shape, noise)``: the adapter the samplers call. ``spaces``: the denoiser
    views it offers; a sampler applies when its SamplerSpec.space is one of them. ``continuous``: its models
    have a probability-flow ODE likelihood (PF-ODE NLL). ``noise_law``: the checker and reader of the model's
    ``noise:`` entry, for a family trained with non-Gaussian noise (None: the family takes none);
    ``noise_forms`` says which entries it takes. ``conditional``: its denoiser passes class labels to a
    class-conditional network (a model's ``label_dim``). ``schedule_options``: the keys of a discrete schedule
    entry, beyond name and T, that its schedule builders read (iddpm: rescale_timesteps). ``check_model(name,
    model)``: the family's own cross-checks of a model entry (ValueError naming the key), None: none.
    """

    name: str
    schedules: dict[str, Callable[[dict], Any]]
    losses: dict[str, Callable[[dict, int], Callable[..., Any]]]
    denoiser: Callable[..., Any]
    spaces: tuple[str, ...]
    continuous: bool = False
    noise_law: Callable[[dict], Any] | None = None
    noise_forms: str = ""
    conditional: bool = False
    schedule_options: tuple[str, ...] = ()
    check_model: Callable[[str, dict], None] | None = None

    @property
    def default_loss(self) -> str | None:
        return next(iter(self.losses), None)
