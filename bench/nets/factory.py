"""The network types a model config names (``network: {type: ...}``), each a constructor and its shape keywords."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.core.options import OptionError, check_options, option_parameters, required_options


@dataclass(frozen=True)
class NetworkType:
    """A network type: its constructor (``module:attribute``, imported on first use, so that a config naming an
    MLP never imports the U-Nets) and the keywords the data shape fills, named by the constructor's parameters.

    ``shape``: constructor keyword -> "channels" or "image_size". ``from_pickle``: the constructor takes the
    official pickle's kwargs dict (bench.checkpoints.edm_pickle) instead of config keywords.
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
    # NCSNv2's RefineNet (ermongroup/ncsnv2 models/ncsnv2.py); its options are the official config's model keys.
    "ncsnv2": NetworkType("bench.nets.ncsnv2:NCSNv2", (("channels", "channels"), ("image_size", "image_size"))),
    # NCSN's CondRefineNetDilated (ermongroup/ncsn models/cond_refinenet_dilated.py); options as NCSNv2's.
    "ncsnv1": NetworkType(
        "bench.nets.ncsnv1:CondRefineNetDilated", (("channels", "channels"), ("image_size", "image_size"))
    ),
    "edm_precond": NetworkType("bench.nets.edm_networks:build_edm_network", from_pickle=True),
    # The ADM backbone of an iDDPMPrecond pickle as an [eps, v] network (x_t, t, y), for the iddpm family's samplers.
    "edm_adm_backbone": NetworkType("bench.nets.edm_adm_backbone:build_edm_adm_backbone", from_pickle=True),
    # score_sde_pytorch's NCSN++ / DDPM++ (one class) and DDPM; their options are the official configs' model
    # keys (bench.nets.score_sde_configs.SCORE_SDE_CIFAR10).
    "score_sde_ncsnpp": NetworkType(
        "bench.nets.score_sde_ncsnpp:ScoreSdeNCSNpp", (("num_channels", "channels"), ("image_size", "image_size"))
    ),
    "score_sde_ddpm": NetworkType(
        "bench.nets.score_sde_ddpm:ScoreSdeDDPM", (("num_channels", "channels"), ("image_size", "image_size"))
    ),
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


def check_network(name: str, network: dict) -> None:
    """Model ``name``'s ``network`` options against its type's constructor, past what the data shape fills.

    Raises ValueError naming the config key, the bad value and what is allowed.
    """
    kind = network["type"]
    key = f"models.{name}.network"
    if kind not in NETWORK_TYPES:
        raise ValueError(f"config key '{key}.type': value {kind!r} is not allowed; allowed: {list(NETWORK_TYPES)}")
    options = {k: v for k, v in network.items() if k != "type"}
    if network_type(kind).from_pickle:
        # Its constructor comes from the official pickle (bench.checkpoints.convert), which replaces this entry.
        if options:
            raise ValueError(
                f"config key '{key}.{next(iter(options))}': network type {kind!r} takes its constructor "
                f"from the checkpoint's pickle; allowed: []"
            )
        return
    build = network_constructor(kind)
    exclude = shape_keywords(kind, channels=0, image_size=0)
    try:
        check_options(build, options, owner=f"network type {kind!r}", exclude=exclude)
    except OptionError as err:
        raise ValueError(f"config key '{key}.{err.option}': {err}") from None
    missing = [n for n in required_options(build, option_parameters(build, exclude=exclude)) if n not in options]
    if missing:
        raise ValueError(f"config key '{key}': network type {kind!r} needs option {missing[0]!r}")
