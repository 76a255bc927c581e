"""score_sde_pytorch's CIFAR-10 networks as data: each config file's model kwargs, and a builder.

Keys are the official config paths (configs/<key>.py @cb1f359f, over configs/default_cifar10_configs.py).
``sde`` and ``continuous`` say how score_sde's get_score_fn (models/utils.py L129) conditions the
network and scales its output:
  vesde, continuous:  time_cond = sigma(t); score = net(x, sigma)          (scale_by_sigma inside)
  vesde, discrete:    time_cond = round((1 - t)(N - 1)), an index into sigmas; score = net(x, index)
  vpsde / subvpsde:   labels = 999 t (continuous, and every sub-VP); score = -net(x, labels) / std(t)
  vpsde, discrete:    labels = t (N - 1); score = -net(x, labels) / sqrt(1 - alphas_cumprod)[labels]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bench.nets.score_sde_ddpm import ScoreSdeDDPM
from bench.nets.score_sde_ncsnpp import ScoreSdeNCSNpp

SCORE_SDE_NETWORKS: dict[str, type[nn.Module]] = {
    "score_sde_ncsnpp": ScoreSdeNCSNpp,
    "score_sde_ddpm": ScoreSdeDDPM,
}

# default_cifar10_configs.py: data and noise-table settings every CIFAR-10 config inherits.
_CIFAR10 = {"image_size": 32, "num_channels": 3, "sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000,
            "dropout": 0.1, "nonlinearity": "swish", "nf": 128, "ch_mult": [1, 2, 2, 2], "attn_resolutions": [16],
            "resamp_with_conv": True, "conditional": True}
_NCSNPP = {**_CIFAR10, "num_res_blocks": 4, "fir": True, "fir_kernel": [1, 3, 3, 1], "skip_rescale": True,
           "resblock_type": "biggan", "progressive": "none", "progressive_input": "residual",
           "progressive_combine": "sum", "fourier_scale": 16}
_VE_NCSNPP = {**_NCSNPP, "centered": False, "scale_by_sigma": True, "embedding_type": "fourier"}
_VP_NCSNPP = {**_NCSNPP, "centered": True, "scale_by_sigma": False, "embedding_type": "positional"}
_DDPMPP = {**_VP_NCSNPP, "fir": False, "progressive_input": "none"}
_DDPM = {**_CIFAR10, "num_res_blocks": 2}


def _entry(kind: str, sde: str, continuous: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "sde": sde, "continuous": continuous, "kwargs": kwargs}


SCORE_SDE_CIFAR10: dict[str, dict[str, Any]] = {
    "ve/cifar10_ncsnpp_continuous": _entry("score_sde_ncsnpp", "vesde", True, _VE_NCSNPP),
    "ve/cifar10_ncsnpp_deep_continuous": _entry("score_sde_ncsnpp", "vesde", True,
                                                {**_VE_NCSNPP, "num_res_blocks": 8}),
    "ve/cifar10_ncsnpp": _entry("score_sde_ncsnpp", "vesde", False, {**_VE_NCSNPP, "embedding_type": "positional"}),
    "ve/cifar10_ddpm": _entry("score_sde_ddpm", "vesde", False, {**_DDPM, "centered": False, "scale_by_sigma": True}),
    "vp/cifar10_ncsnpp_continuous": _entry("score_sde_ncsnpp", "vpsde", True, _VP_NCSNPP),
    "vp/cifar10_ddpmpp_continuous": _entry("score_sde_ncsnpp", "vpsde", True, _DDPMPP),
    "vp/cifar10_ddpmpp_deep_continuous": _entry("score_sde_ncsnpp", "vpsde", True, {**_DDPMPP, "num_res_blocks": 8}),
    "vp/cifar10_ddpmpp": _entry("score_sde_ncsnpp", "vpsde", False, _DDPMPP),
    "vp/ddpm/cifar10_continuous": _entry("score_sde_ddpm", "vpsde", True,
                                         {**_DDPM, "centered": True, "scale_by_sigma": False}),
    "vp/ddpm/cifar10": _entry("score_sde_ddpm", "vpsde", False, {**_DDPM, "centered": True, "scale_by_sigma": False}),
    "subvp/cifar10_ncsnpp_continuous": _entry("score_sde_ncsnpp", "subvpsde", True, _VP_NCSNPP),
    "subvp/cifar10_ddpmpp_continuous": _entry("score_sde_ncsnpp", "subvpsde", True, _DDPMPP),
    "subvp/cifar10_ddpmpp_deep_continuous": _entry("score_sde_ncsnpp", "subvpsde", True,
                                                   {**_DDPMPP, "num_res_blocks": 8}),
    "subvp/cifar10_ddpm_continuous": _entry("score_sde_ddpm", "subvpsde", True,
                                            {**_DDPM, "centered": True, "scale_by_sigma": False}),
}


def build_score_sde_network(network: dict[str, Any]) -> nn.Module:
    """Our score_sde network from {'type': score_sde_ncsnpp | score_sde_ddpm, **constructor kwargs}."""
    kind = network.get("type")
    if kind not in SCORE_SDE_NETWORKS:
        raise ValueError(f"network type {kind!r} is not one of {sorted(SCORE_SDE_NETWORKS)}")
    cls = SCORE_SDE_NETWORKS[kind]
    kwargs = {k: v for k, v in network.items() if k != "type"}
    accepted = set(cls.__init__.__kwdefaults__ or {})
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"network type {kind!r} takes no option(s) {unknown}; it takes {sorted(accepted)}")
    return cls(**kwargs)
