"""Helpers that write EDM-layout pickles the way the official code does, without that code.

Stand-in `torch_utils.persistence` and `dnnlib.util` modules exist only while pickling, so
loading has to do without them, as it must for the released files.
"""

from __future__ import annotations

import copy
import io
import pickle
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

STAND_IN_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
_TORCH_NN_PREFIX = "torch.nn.modules."


@contextmanager
def official_stand_ins(module_src: str) -> Iterator[type]:
    """Make the official module names importable while pickling; yield the EasyDict stand-in."""
    assert not any(name in sys.modules for name in STAND_IN_MODULES)
    persistence = types.ModuleType("torch_utils.persistence")

    def reconstruct(meta):
        raise AssertionError("the official reconstructor must never be reached")

    reconstruct.__module__ = persistence.__name__
    reconstruct.__qualname__ = reconstruct.__name__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = reconstruct
    persistence.module_src = module_src
    util = types.ModuleType("dnnlib.util")
    easy_dict = type("EasyDict", (dict,), {"__module__": util.__name__})
    util.EasyDict = easy_dict
    torch_utils, dnnlib = types.ModuleType("torch_utils"), types.ModuleType("dnnlib")
    torch_utils.persistence, dnnlib.util = persistence, util
    modules = dict(zip(STAND_IN_MODULES, (torch_utils, persistence, dnnlib, util), strict=True))
    sys.modules.update(modules)
    try:
        yield easy_dict
    finally:
        for name in STAND_IN_MODULES:
            sys.modules.pop(name, None)


def persistent_reduce(class_name: str, state: dict[str, Any]) -> tuple:
    """What persistence.persistent_class's __reduce__ returns: reconstruct(meta), no state."""
    persistence = sys.modules["torch_utils.persistence"]
    meta = {
        "type": "class",
        "version": 6,
        "module_src": persistence.module_src,
        "class_name": class_name,
        "state": state,
    }
    return persistence._reconstruct_persistent_obj, (meta,)


def persistent(base: type) -> type:
    """Like EDM's persistent_class: remember constructor args, pickle as reconstruct(meta)."""

    class Persistent(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            return persistent_reduce(base.__name__, dict(self.__dict__))

    Persistent.__name__ = Persistent.__qualname__ = base.__name__
    return Persistent


class OfficialModulePickler(pickle.Pickler):
    """Pickles every module outside torch.nn as a persistent record, as the official classes
    (EDMPrecond, SongUNet, DhariwalUNet, UNetBlock, Conv2d, ...) all are; torch.nn containers
    stay references. Use inside official_stand_ins."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module) and not type(obj).__module__.startswith(_TORCH_NN_PREFIX):
            return persistent_reduce(type(obj).__name__, dict(obj.__dict__))
        return NotImplemented


def dumps_official(data: Any) -> bytes:
    """Protocol-4 pickle of data with our modules written as official persistent records."""
    buffer = io.BytesIO()
    OfficialModulePickler(buffer, protocol=4).dump(data)
    return buffer.getvalue()
