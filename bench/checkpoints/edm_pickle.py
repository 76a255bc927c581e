"""Read EDM network pickles without the official code (an allow-list unpickler), and load one into our network.

The released pickles rebuild their classes by executing the embedded source text (module_src);
here that text is never executed. Persistent objects become PersistentObject records, plain
torch.nn classes become state-keeping stubs, and every other global is refused. load_edm_network
rebuilds our own EDM network from the recovered constructor kwargs and loads the weights strictly.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from bench.checkpoints.layouts import load_strict
from bench.nets.edm_networks import build_edm_network

_TORCH_NN_PREFIX = "torch.nn.modules."


class EdmPickleError(RuntimeError):
    """An EDM pickle that is unreadable or not laid out as expected."""


class ForbiddenGlobal(EdmPickleError):
    """The pickle names a global outside the allow-list."""

    def __init__(self, module: str, name: str, source: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(
            f"{source}: refusing global {self.global_name!r}: not in the EDM allow-list "
            f"({', '.join(sorted(ALLOWED_GLOBALS))}, or a class under {_TORCH_NN_PREFIX}*)"
        )


@dataclass
class PersistentObject:
    """A persistent-class instance kept as data: the class name, version and pickled __dict__."""

    class_name: str
    version: int
    state: dict[str, Any]


class TorchModuleStub:
    """Stands in for a torch.nn class pickled by reference; keeps its pickled __dict__."""

    torch_class = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


class EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict: its pickled items are all that matter."""


def _reconstruct_persistent(meta: Any) -> PersistentObject:
    """Replacement for torch_utils.persistence._reconstruct_persistent_obj; ignores module_src."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise EdmPickleError(f"persistent object meta of type {kind!r}; only 'class' is supported")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise EdmPickleError(f"persistent object meta lacks class_name/state: keys {sorted(meta)}")
    return PersistentObject(class_name=class_name, version=meta.get("version"), state=state)


def _load_storage(data: bytes) -> Any:
    """Replacement for torch.storage._load_from_bytes that only accepts weights."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_scalar_reconstructor() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


ALLOWED_GLOBALS: dict[str, Any] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent,
    "dnnlib.util.EasyDict": EasyDict,
    "torch.storage._load_from_bytes": _load_storage,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "numpy.core.multiarray.scalar": _numpy_scalar_reconstructor(),
    "numpy._core.multiarray.scalar": _numpy_scalar_reconstructor(),
    "numpy.dtype": np.dtype,
}


@cache
def _module_stub(module: str, name: str) -> type[TorchModuleStub]:
    return type(name, (TorchModuleStub,), {"torch_class": f"{module}.{name}"})


class EdmUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ALLOWED_GLOBALS and stubs for torch.nn.modules classes."""

    def __init__(self, file: io.BufferedIOBase, *, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualified]
        parts = module.split(".") + [name]
        if module.startswith(_TORCH_NN_PREFIX) and all(p.isidentifier() for p in parts):
            return _module_stub(module, name)
        raise ForbiddenGlobal(module, name, self._source)


class EdmNetwork(NamedTuple):
    """What building our own network needs from an EDM pickle."""

    state_dict: OrderedDict[str, torch.Tensor]
    precond_init_kwargs: dict[str, Any]
    backbone_init_kwargs: dict[str, Any]
    precond_class_name: str
    backbone_class_name: str


def _module_state(node: Any, where: str) -> dict[str, Any]:
    is_module = isinstance(node, (PersistentObject, TorchModuleStub))
    state = getattr(node, "state", None) if is_module else None
    if not isinstance(state, dict) or not isinstance(state.get("_parameters"), dict):
        raise EdmPickleError(f"{where} is not a pickled torch module (found {type(node).__name__})")
    return state


def _collect_tensors(node: Any, prefix: str, out: OrderedDict, where: str) -> None:
    """Depth-first as nn.Module.state_dict: parameters, persistent buffers, then children."""
    state = _module_state(node, where)
    non_persistent = state.get("_non_persistent_buffers_set", set())
    entries = list(state["_parameters"].items()) + [
        (name, buf) for name, buf in state.get("_buffers", {}).items() if name not in non_persistent
    ]
    for name, tensor in entries:
        if tensor is None:
            continue
        if not torch.is_tensor(tensor):
            raise EdmPickleError(f"{where}.{name} is {type(tensor).__name__}, not a tensor")
        out[prefix + name] = tensor.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, f"{where}.{name}")


def _plain(value: Any) -> Any:
    """Numpy scalars to Python numbers and EasyDicts to dicts, recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _init_kwargs(obj: PersistentObject, where: str) -> dict[str, Any]:
    args, kwargs = obj.state.get("_init_args", ()), obj.state.get("_init_kwargs")
    if args:
        raise EdmPickleError(f"{where} ({obj.class_name}) was built with positional arguments "
                             f"{args!r}; only keyword construction can be rebuilt")
    if not isinstance(kwargs, dict):
        raise EdmPickleError(f"{where} ({obj.class_name}) has no _init_kwargs dict")
    return _plain(kwargs)


def unpickle_edm(path: Path) -> dict[str, Any]:
    """The pickled top-level dict (ema, loss_fn, augment_pipe, dataset_kwargs); runs no code."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = EdmUnpickler(handle, source=str(path)).load()
    except EdmPickleError:
        raise
    except FileNotFoundError:
        raise EdmPickleError(f"EDM pickle {path} does not exist") from None
    except Exception as exc:
        # A damaged stream fails in many ways inside pickle and torch; all mean an unreadable file.
        raise EdmPickleError(
            f"EDM pickle {path} is truncated or corrupted ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(data, dict) or "ema" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise EdmPickleError(f"{path} should hold a dict with key 'ema'; found {found}")
    return data


def load_edm_pickle(path: Path) -> EdmNetwork:
    """State_dict, init kwargs and class names of the 'ema' network in an EDM pickle."""
    ema = unpickle_edm(path)["ema"]
    if not isinstance(ema, PersistentObject):
        raise EdmPickleError(f"{path}: 'ema' is {type(ema).__name__}, not a persistent network")
    backbone = _module_state(ema, f"{path}: ema").get("_modules", {}).get("model")
    if not isinstance(backbone, PersistentObject):
        raise EdmPickleError(f"{path}: ema ({ema.class_name}) has no persistent 'model' child")
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    _collect_tensors(ema, "", state_dict, f"{path}: ema")
    return EdmNetwork(
        state_dict=state_dict,
        precond_init_kwargs=_init_kwargs(ema, f"{path}: ema"),
        backbone_init_kwargs=_init_kwargs(backbone, f"{path}: ema.model"),
        precond_class_name=ema.class_name,
        backbone_class_name=backbone.class_name,
    )


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
