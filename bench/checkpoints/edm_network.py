"""Our own EDM network, rebuilt from an EDM pickle's constructor kwargs and loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.checkpoints.edm_pickle import EdmPickleError, load_edm_pickle
from bench.checkpoints.layouts import load_strict
from bench.nets.edm_networks import build_edm_network

_MISSING = object()


def _check_backbone_kwargs(
    network: nn.Module, precond_kwargs: dict[str, Any], backbone_kwargs: dict[str, Any], path: Path
) -> None:
    """The pickled backbone kwargs must be what the wrapper passes on (official constructor)."""
    passed_on = {
        "img_resolution": network.img_resolution,
        "in_channels": network.img_channels,
        "out_channels": network.model.out_channels,
        "label_dim": network.label_dim,
    }
    wrong = []
    for key, value in backbone_kwargs.items():
        expected = passed_on[key] if key in passed_on else precond_kwargs.get(key, _MISSING)
        if expected is _MISSING:
            wrong.append(f"{key}={value!r} (absent from the wrapper's kwargs)")
        elif expected != value:
            wrong.append(f"{key}={value!r} (wrapper gives {expected!r})")
    if wrong:
        raise EdmPickleError(
            f"{path}: backbone kwargs disagree with the wrapper's: {', '.join(wrong)}"
        )


def load_edm_network(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Network (eval mode) and {'precond', 'backbone', 'class_names'} from an EDM pickle."""
    path = Path(path)
    recovered = load_edm_pickle(path)
    precond_kwargs = recovered.precond_init_kwargs
    backbone_name = recovered.backbone_class_name
    model_type = precond_kwargs.get("model_type", backbone_name)
    if model_type != backbone_name:
        raise EdmPickleError(
            f"{path}: wrapper kwargs say model_type={model_type!r} but the pickled backbone "
            f"is {backbone_name!r}"
        )
    network = build_edm_network(
        {"class_name": recovered.precond_class_name, **precond_kwargs, "model_type": backbone_name}
    )
    _check_backbone_kwargs(network, precond_kwargs, recovered.backbone_init_kwargs, path)
    load_strict(network, recovered.state_dict)
    info = {
        "precond": precond_kwargs,
        "backbone": recovered.backbone_init_kwargs,
        "class_names": {"precond": recovered.precond_class_name, "backbone": backbone_name},
    }
    return network.eval(), info
