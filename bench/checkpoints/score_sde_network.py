"""Our score-SDE network (NCSN++ / DDPM++ / DDPM) loaded strictly from score_sde_pytorch's checkpoint_N.pth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.checkpoints.layouts import load_score_sde_checkpoint, load_strict
from bench.nets.score_sde_configs import SCORE_SDE_NETWORKS, build_score_sde_network


def ema_parameter_names(net: nn.Module) -> list[str]:
    """The parameters score_sde's EMA tracks, in order: the trainable ones (models/ema.py L28-29).

    NCSN++'s Fourier weights (requires_grad False, layerspp.py L37) are in 'model' but not in the shadow.
    """
    return [name for name, p in net.named_parameters() if p.requires_grad]


def load_score_sde_network(
    path: Path, network: dict[str, Any], data_shape: tuple[int, ...], use_ema: bool = True
) -> nn.Module:
    """Network ``network`` (type score_sde_ncsnpp | score_sde_ddpm, eval mode) with the weights of ``path``.

    With use_ema the EMA shadow replaces the trainable parameters, as score_sde's evaluation does
    (run_lib.py L276-284: restore_checkpoint, then ema.copy_to(score_model.parameters())).
    """
    if network.get("type") not in SCORE_SDE_NETWORKS:
        raise ValueError(
            f"layout 'score_sde_dict' holds score_sde_pytorch's own networks: network type must be one of "
            f"{sorted(SCORE_SDE_NETWORKS)}, got {network.get('type')!r}"
        )
    net = build_score_sde_network(network)
    shape = (net.num_channels, net.image_size, net.image_size)
    if shape != tuple(data_shape):
        raise ValueError(
            f"network {network['type']!r} makes {list(shape)} images (num_channels, image_size), the dataset "
            f"has {list(data_shape)}"
        )
    state = load_score_sde_checkpoint(Path(path), use_ema, parameter_names=ema_parameter_names(net))
    load_strict(net, state)
    return net.eval()
