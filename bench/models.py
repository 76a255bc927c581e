"""Our own model checkpoint format: the network's config travels with its weights."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from bench.core.schedules import DiscreteSchedule
from bench.runtime.io import CorruptFileError, atomic_torch_save, load_torch_file

FORMAT = "dpm-bench-model/1"


NETWORK_TYPES = ("mlp", "ddpm_unet", "adm_unet", "edm_precond")


def network_constructor(kind: str) -> Callable[..., nn.Module]:
    """The constructor of network ``kind``, whose keywords (past ``shape_keywords``) are the config's options.

    ``edm_precond`` is built from an official pickle's constructor kwargs (bench.nets.edm_networks).
    """
    if kind == "mlp":
        from bench.nets.mlp import MLPDenoiser

        return MLPDenoiser
    if kind == "ddpm_unet":
        from bench.nets.ddpm_unet import DDPMUNet

        return DDPMUNet
    if kind == "adm_unet":
        from bench.nets.adm_unet import ADMUNet

        return ADMUNet
    if kind == "edm_precond":
        from bench.nets.edm_networks import build_edm_network

        return build_edm_network
    raise ValueError(f"network type {kind!r} is not one of {list(NETWORK_TYPES)}")


def shape_keywords(kind: str, *, channels: int, image_size: int) -> dict[str, int]:
    """The keywords build_network passes to network ``kind``'s constructor from the data shape."""
    return {
        "mlp": {"channels": channels, "image_size": image_size},
        "ddpm_unet": {"in_channels": channels, "out_ch": channels, "image_size": image_size},
        "adm_unet": {"in_channels": channels},
    }.get(kind, {})


def build_network(network: dict, *, channels: int, image_size: int) -> nn.Module:
    """Instantiate the network named by ``network['type']`` for data of the given shape."""
    kwargs = {k: v for k, v in network.items() if k != "type"}
    kind = network["type"]
    build = network_constructor(kind)
    if kind == "edm_precond":
        return build(kwargs)
    return build(**shape_keywords(kind, channels=channels, image_size=image_size), **kwargs)


# Schedules and training losses each family accepts (the first loss is its default), checked with the config.
FAMILY_SCHEDULES: dict[str, tuple[str, ...]] = {
    "ddpm": ("linear", "cosine"),
    "iddpm": ("linear", "cosine"),
    "ve": ("ve",),
    "edm": ("edm",),
    "ddgm": ("linear", "cosine"),
}
FAMILY_LOSSES: dict[str, tuple[str, ...]] = {
    "ddpm": ("simple", "hybrid"),
    "iddpm": ("simple", "hybrid", "vlb"),
    "ve": ("dsm", "ssm"),
    "edm": ("edm",),
    "ddgm": ("l1",),
}


def build_schedule(schedule: dict):
    """The noise schedule of a model config: a discrete chain, the VE sigma range or EDM's sigma range."""
    if schedule["name"] == "ve":
        from bench.methods.ncsn import VESchedule

        return VESchedule(schedule["sigma_min"], schedule["sigma_max"])
    if schedule["name"] == "edm":
        from bench.methods.edm import EDMSchedule

        return EDMSchedule(schedule["sigma_min"], schedule["sigma_max"], schedule.get("sigma_data", 0.5))
    return DiscreteSchedule.named(schedule["name"], schedule["T"])


def make_denoiser(
    family: str, net: nn.Module, schedule, data_shape: tuple[int, ...] | None = None, *, noise: dict | None = None
):
    """The denoiser that adapts a trained network of ``family`` to the samplers' interface.

    ``data_shape`` (channels, height, width) is needed by the ``edm`` family's preconditioning, ``noise``
    (the model config's noise law) by a DDGM denoiser for its prior and samplers.
    """
    from bench.core.denoiser import DiscreteEpsDenoiser

    if family == "ddgm":
        from bench.methods.ddgm import DDGMDenoiser, noise_law

        return DDGMDenoiser(net, schedule, noise_law(noise))

    if family == "ve":
        from bench.methods.ncsn import VENetworkScore

        return VENetworkScore(net, schedule)
    if family == "edm":
        from bench.methods.edm import EDMNetworkDenoiser

        if data_shape is None:
            raise ValueError("the edm family's denoiser needs the data shape (channels, height, width)")
        from bench.nets.edm_precond import Preconditioner
        from bench.runtime.speed import unwrap_network

        # An official EDM network (converted pickle) carries its own preconditioning; ours is a bare backbone.
        # Either may come wrapped by speed options (bench.runtime.speed), which keep its attributes.
        if isinstance(unwrap_network(net), Preconditioner):
            return EDMNetworkDenoiser(net)
        return EDMNetworkDenoiser(schedule.precond(net, tuple(data_shape)))
    if family == "iddpm":
        from bench.methods.iddpm import LearnedVarianceDenoiser

        return LearnedVarianceDenoiser(net, schedule)
    return DiscreteEpsDenoiser(net, schedule)


def training_loss(model_cfg: dict, max_level: int):
    """The training objective of a model config: (net, schedule, x0, generator) -> scalar loss."""
    loss = model_cfg.get("loss", {"name": FAMILY_LOSSES.get(model_cfg["family"], ("simple",))[0]})
    if loss["name"] == "dsm":
        from bench.methods.ncsn import dsm_loss

        return dsm_loss
    if loss["name"] == "ssm":
        from bench.methods.ncsn import ssm_loss

        return ssm_loss
    if loss["name"] == "edm":
        from bench.methods.edm import P_MEAN, P_STD, edm_family_loss

        return partial(edm_family_loss, P_mean=loss.get("P_mean", P_MEAN), P_std=loss.get("P_std", P_STD))
    if loss["name"] == "simple":
        from bench.steps.train import simple_loss

        return simple_loss
    if loss["name"] == "hybrid":
        from bench.methods.iddpm import HYBRID_LAMBDA, hybrid_loss

        return partial(hybrid_loss, max_level=max_level, lam=loss.get("lambda", HYBRID_LAMBDA))
    if loss["name"] == "vlb":
        from bench.methods.iddpm import vlb_loss

        return partial(vlb_loss, max_level=max_level)
    if loss["name"] == "l1":
        from bench.methods.ddgm import l1_loss, noise_law

        return l1_loss(noise_law(model_cfg.get("noise")))
    raise ValueError(f"loss {loss['name']!r} is not one of ['simple', 'hybrid', 'vlb', 'dsm', 'ssm', 'edm', 'l1']")


def save_model(
    path: Path, net: nn.Module, model_cfg: dict, data_shape: tuple[int, ...], max_level: int, info: dict
) -> Path:
    """Write the EMA weights with the model config and training info."""
    return atomic_torch_save(
        {
            "format": FORMAT,
            "config": model_cfg,
            "data_shape": list(data_shape),
            "max_level": int(max_level),
            "info": info,
            "state_dict": net.state_dict(),
        },
        path,
    )


def load_model(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild (network in eval mode, schedule, checkpoint dict) from a file written by save_model."""
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CorruptFileError(f"{path} is not a {FORMAT} checkpoint")
    lacking = [k for k in ("config", "data_shape", "max_level", "state_dict") if k not in ckpt]
    if lacking:
        raise CorruptFileError(f"{path} lacks the checkpoint entries {lacking}")
    cfg = ckpt["config"]
    channels, size, _ = ckpt["data_shape"]
    net = build_network(cfg["network"], channels=channels, image_size=size)
    try:
        result = net.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # tensors of the wrong shape: torch lists each one
        reason = " ".join(str(err).split())
        kind = cfg["network"]["type"]
        raise CorruptFileError(f"{path}: state dict does not match network {kind!r}: {reason}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CorruptFileError(
            f"{path}: state dict does not match network {cfg['network']['type']!r}: missing keys "
            f"{result.missing_keys}, unexpected keys {result.unexpected_keys}"
        )
    schedule = build_schedule(cfg["schedule"])
    return net.eval().requires_grad_(False), schedule, ckpt
