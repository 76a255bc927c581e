"""Model families: each module here declares ``FAMILY``, a FamilySpec (bench.families.spec); one module, one family."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from bench.families.spec import FamilySpec
from bench.samplers import SAMPLER_SPECS


def _discover() -> dict[str, FamilySpec]:
    specs: dict[str, FamilySpec] = {}
    for module in pkgutil.iter_modules(__path__):
        spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FAMILY", None)
        if isinstance(spec, FamilySpec):
            specs[spec.name] = spec
    return specs


FAMILY_SPECS: dict[str, FamilySpec] = _discover()
# The losses that take iDDPM's importance sampling of t (they weight each sample by 1 / (T p_t)).
LOSS_AWARE_LOSSES = ("hybrid", "vlb")
# Optional keys of a linear or cosine schedule entry (the schema's); each family names those it reads.
DISCRETE_SCHEDULE_OPTIONS = ("rescale_timesteps",)


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name``."""
    try:
        return FAMILY_SPECS[name]
    except KeyError:
        raise ValueError(f"model family {name!r} is not one of {sorted(FAMILY_SPECS)}") from None


def compatible_samplers(family: str) -> list[str]:
    """The sampler functions that apply to ``family``, sorted: those whose space its denoiser offers."""
    spaces = get_family(family).spaces
    return sorted(name for name, spec in SAMPLER_SPECS.items() if spec.space in spaces)


def continuous_families() -> list[str]:
    """The families whose models have a PF-ODE likelihood."""
    return [name for name, spec in FAMILY_SPECS.items() if spec.continuous]


def build_schedule(schedule: dict) -> Any:
    """The noise schedule of a model config's ``schedule:`` entry: a discrete chain or a sigma range, built by a
    family that reads each of its optional keys (an iDDPM chain's rescale_timesteps)."""
    options = [key for key in DISCRETE_SCHEDULE_OPTIONS if key in schedule]
    for spec in FAMILY_SPECS.values():
        if schedule["name"] in spec.schedules and all(key in spec.schedule_options for key in options):
            return spec.schedules[schedule["name"]](schedule)
    known = sorted({name for spec in FAMILY_SPECS.values() for name in spec.schedules})
    raise ValueError(f"schedule {schedule['name']!r} is not one of {known}")


def make_denoiser(
    family: str, net: nn.Module, schedule: Any, data_shape: tuple[int, ...] | None = None, *, noise: dict | None = None
) -> Any:
    """The denoiser that adapts a trained network of ``family`` to the samplers' interface.

    ``data_shape`` (channels, height, width) is needed by the ``edm`` family's preconditioning, ``noise``
    (the model config's noise law) by a DDGM denoiser for its prior and samplers.
    """
    return get_family(family).denoiser(net, schedule, data_shape, noise)


def training_loss(model_cfg: dict, max_level: int) -> Any:
    """The training objective of a model config: (net, schedule, x0, generator) -> scalar loss."""
    spec = get_family(model_cfg["family"])
    name = model_cfg.get("loss", {"name": spec.default_loss})["name"]
    if name not in spec.losses:
        raise ValueError(f"loss {name!r} does not apply to family {spec.name!r}; allowed: {list(spec.losses)}")
    return spec.losses[name](model_cfg, max_level)


def check_model(name: str, model: dict) -> None:
    """A config's model entry against its family: the family, its noise law, schedule and loss.

    Raises ValueError naming the config key, the value and what is allowed.
    """
    family = model["family"]
    if family not in FAMILY_SPECS:
        raise ValueError(
            f"config key 'models.{name}.family': value {family!r} is not allowed; allowed: {sorted(FAMILY_SPECS)}"
        )
    spec = FAMILY_SPECS[family]
    _check_noise(name, model, spec)
    if "train" in model and not spec.losses:
        raise ValueError(
            f"config key 'models.{name}.train': family {family!r} has no training objective here; its models "
            "load released weights (give 'checkpoint' instead)"
        )
    _check_labels(name, model, spec)
    schedule = model["schedule"]
    if schedule["name"] not in spec.schedules:
        raise ValueError(
            f"config key 'models.{name}.schedule.name': value {schedule['name']!r} does not apply to "
            f"family {family!r}; allowed: {list(spec.schedules)}"
        )
    for key in DISCRETE_SCHEDULE_OPTIONS:
        if key in schedule and key not in spec.schedule_options:
            takers = sorted(f for f, s in FAMILY_SPECS.items() if key in s.schedule_options)
            raise ValueError(
                f"config key 'models.{name}.schedule.{key}': family {family!r} does not take it; "
                f"allowed for families {takers}"
            )
    if "loss" in model and model["loss"]["name"] not in spec.losses:
        raise ValueError(
            f"config key 'models.{name}.loss.name': value {model['loss']['name']!r} does not apply to "
            f"family {family!r}; allowed: {list(spec.losses)}"
        )
    loss_name = model.get("loss", {}).get("name", spec.default_loss)
    if model.get("train", {}).get("t_sampler") == "loss_aware" and loss_name not in LOSS_AWARE_LOSSES:
        raise ValueError(
            f"config key 'models.{name}.train.t_sampler': 'loss_aware' weights each sample's loss, which the loss "
            f"{loss_name!r} does not; allowed with loss.name in {list(LOSS_AWARE_LOSSES)}"
        )
    if "T" in schedule:
        try:
            build_schedule(schedule)
        except ValueError as err:
            raise ValueError(f"config key 'models.{name}.schedule.T': {err}") from None
    if "sigma_min" in schedule and not schedule["sigma_min"] < schedule["sigma_max"]:
        raise ValueError(
            f"config key 'models.{name}.schedule': sigma_min={schedule['sigma_min']!r} must be below "
            f"sigma_max={schedule['sigma_max']!r}"
        )
    if spec.check_model is not None:
        spec.check_model(name, model)


def _check_noise(name: str, model: dict, spec: FamilySpec) -> None:
    """A family trained with non-Gaussian noise needs its noise law; no other family takes one."""
    takers = [f for f, s in FAMILY_SPECS.items() if s.noise_law is not None]
    if "noise" in model and spec.noise_law is None:
        allowed = " or ".join(repr(f) for f in takers)
        raise ValueError(
            f"config key 'models.{name}.noise': only family {allowed} takes a noise law, not family {spec.name!r}"
        )
    if spec.noise_law is None:
        return
    if "noise" not in model:
        raise ValueError(
            f"config key 'models.{name}.noise': missing; family {spec.name!r} needs a noise law, {spec.noise_forms}"
        )
    try:
        spec.noise_law(model["noise"])
    except ValueError as err:
        raise ValueError(f"config key 'models.{name}.noise': {err}") from None


def _check_labels(name: str, model: dict, spec: FamilySpec) -> None:
    """A class-conditional model (``label_dim``) needs a family whose denoiser passes labels, and a checkpoint:
    training here draws no labels."""
    if "label_dim" not in model:
        return
    if not spec.conditional:
        takers = sorted(f for f, s in FAMILY_SPECS.items() if s.conditional)
        raise ValueError(
            f"config key 'models.{name}.label_dim': family {spec.name!r} samples no class-conditional model; "
            f"allowed for families {takers}"
        )
    if "checkpoint" not in model:
        raise ValueError(
            f"config key 'models.{name}.label_dim': a class-conditional model must come from a checkpoint "
            f"(training here is unconditional); add 'checkpoint' or remove 'label_dim'"
        )
