"""Our own model file format: the network's config travels with its weights (written by train and convert)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.families import build_schedule
from bench.nets.factory import build_network
from bench.runtime.io import CorruptFileError, atomic_torch_save, load_torch_file

FORMAT = "dpm-bench-model/1"


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
