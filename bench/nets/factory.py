"""The network types a model config names (``network: {type: ...}``), each a constructor and its shape keywords."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class NetworkType:
    """A network type: its constructor (``module:attribute``, imported on first use, so that a config naming an
    MLP never imports the U-Nets) and the keywords the data shape fills, named by the constructor's parameters.

    ``shape``: constructor keyword -> "channels" or "image_size". ``from_pickle``: the constructor takes the
    official pickle's kwargs dict (bench.checkpoints.edm_network) instead of config keywords.
    """

    constructor: str
    shape: tuple[tuple[str, str], ...] = ()
    from_pickle: bool = False

    def load(self) -> Callable[..., nn.Module]:
        module, attribute = self.constructor.split(":")
        return getattr(importlib.import_module(module), attribute)


NETWORK_TYPES: dict[str, NetworkType] = {
    "mlp": NetworkType("bench.nets.mlp:MLPDenoiser", (("channels", "channels"), ("image_size", "image_size"))),
    "ddpm_unet": NetworkType(
        "bench.nets.ddpm_unet:DDPMUNet",
        (("in_channels", "channels"), ("out_ch", "channels"), ("image_size", "image_size")),
    ),
    "adm_unet": NetworkType("bench.nets.adm_unet:ADMUNet", (("in_channels", "channels"),)),
    "edm_precond": NetworkType("bench.nets.edm_networks:build_edm_network", from_pickle=True),
}


def network_type(kind: str) -> NetworkType:
    """The registered network type ``kind``."""
    try:
        return NETWORK_TYPES[kind]
    except KeyError:
        raise ValueError(f"network type {kind!r} is not one of {list(NETWORK_TYPES)}") from None


def network_constructor(kind: str) -> Callable[..., nn.Module]:
    """The constructor of network ``kind``, whose keywords (past ``shape_keywords``) are the config's options."""
    return network_type(kind).load()


def shape_keywords(kind: str, *, channels: int, image_size: int) -> dict[str, int]:
    """The keywords build_network passes to network ``kind``'s constructor from the data shape."""
    sizes = {"channels": channels, "image_size": image_size}
    return {keyword: sizes[size] for keyword, size in network_type(kind).shape}


def build_network(network: dict, *, channels: int, image_size: int) -> nn.Module:
    """Instantiate the network named by ``network['type']`` for data of the given shape."""
    kind = network["type"]
    kwargs = {k: v for k, v in network.items() if k != "type"}
    build = network_constructor(kind)
    if network_type(kind).from_pickle:
        return build(kwargs)
    return build(**shape_keywords(kind, channels=channels, image_size=image_size), **kwargs)
