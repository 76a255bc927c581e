"""Make torchvision importable on CPU-only torch, where PyPI's CUDA-built torchvision fails."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

# The exact failure of torchvision 0.28 (CUDA wheel) on CPU torch: its _C.so cannot load, so
# _meta_registrations.py registers a fake kernel for an operator nobody defined.
MISSING_NMS_MESSAGE = "operator torchvision::nms does not exist"

# Schemas as torchvision's C++ library defines them (csrc/ops/nms.cpp and the quantized qnms).
_NMS_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# Kept alive for the whole process: dropping a Library object unregisters its operators.
_fallback_library: torch.library.Library | None = None


def greedy_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: keep boxes by falling score, drop IoU > threshold.

    `dets` holds (x1, y1, x2, y2) rows; returns int64 indices of kept boxes, highest score first.
    Integer boxes and scores (qnms passes the int_repr of quantized tensors) are compared in
    float64, where the quantization scale and zero point cancel out of the IoU ratio.
    """
    if dets.dim() != 2 or dets.size(1) != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(dets.shape)}")
    if scores.dim() != 1 or scores.size(0) != dets.size(0):
        raise ValueError(f"scores must have shape [{dets.size(0)}] to match the boxes, got {list(scores.shape)}")
    boxes = dets.detach().to(torch.float64)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores.detach().to(torch.float64), descending=True, stable=True)
    suppressed = torch.zeros(dets.size(0), dtype=torch.bool)
    keep: list[int] = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = width * height
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=dets.device)


def _register_cpu_nms() -> None:
    global _fallback_library
    if _fallback_library is not None:
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _NMS_SCHEMAS.items():
        library.define(schema)
        library.impl(name, greedy_nms, "CPU")
    _fallback_library = library


def _forget_torchvision_modules() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision, first registering CPU nms/qnms when its C++ operators are missing.

    Only the exact `operator torchvision::nms does not exist` failure triggers the fallback;
    any other import error propagates unchanged. Calling it again is a plain import.
    """
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if str(error) != MISSING_NMS_MESSAGE:
            raise
    _register_cpu_nms()
    _forget_torchvision_modules()
    return importlib.import_module("torchvision")


def cpu_nms_fallback_active() -> bool:
    """Whether this process runs torchvision on the CPU nms/qnms registered here."""
    return _fallback_library is not None
