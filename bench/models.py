"""Our own model checkpoint format: the network's config travels with its weights."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from bench.io import CorruptFileError, atomic_torch_save, load_torch_file
from bench.schedules import DiscreteSchedule

FORMAT = "dpm-bench-model/1"


def build_network(network: dict, *, channels: int, image_size: int) -> nn.Module:
    """Instantiate the network named by ``network['type']`` for data of the given shape."""
    kwargs = {k: v for k, v in network.items() if k != "type"}
    kind = network["type"]
    if kind == "mlp":
        from bench.nets.mlp import MLPDenoiser

        return MLPDenoiser(channels=channels, image_size=image_size, **kwargs)
    if kind == "ddpm_unet":
        from bench.nets.ddpm_unet import DDPMUNet

        return DDPMUNet(in_channels=channels, out_ch=channels, image_size=image_size, **kwargs)
    raise ValueError(f"network type {kind!r} is not one of ['mlp', 'ddpm_unet']")


def make_denoiser(family: str, net: nn.Module, schedule: DiscreteSchedule):
    """The denoiser that adapts a trained network of ``family`` to the samplers' interface."""
    from bench.families import DiscreteEpsDenoiser

    if family == "iddpm":
        from bench.iddpm import LearnedVarianceDenoiser

        return LearnedVarianceDenoiser(net, schedule)
    return DiscreteEpsDenoiser(net, schedule)


def training_loss(model_cfg: dict, max_level: int):
    """The training objective of a model config: (net, schedule, x0, generator) -> scalar loss."""
    loss = model_cfg.get("loss", {"name": "simple"})
    if loss["name"] == "simple":
        from bench.training import simple_loss

        return simple_loss
    if loss["name"] == "hybrid":
        from bench.iddpm import HYBRID_LAMBDA, hybrid_loss

        return partial(hybrid_loss, max_level=max_level, lam=loss.get("lambda", HYBRID_LAMBDA))
    raise ValueError(f"loss {loss['name']!r} is not one of ['simple', 'hybrid']")


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


def load_model(path: Path) -> tuple[nn.Module, DiscreteSchedule, dict[str, Any]]:
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
    schedule = DiscreteSchedule.named(cfg["schedule"]["name"], cfg["schedule"]["T"])
    return net.eval().requires_grad_(False), schedule, ckpt
