"""FLOPs of network calls and the dense peak of known GPUs: the achieved TFLOP/s of python -m bench perf.

FLOPs are torch's count (torch.utils.flop_counter): 2 per multiply-add of every matmul, convolution
and attention product; elementwise work is not counted, so the rate is that of the network's products,
the usual convention for model FLOP utilisation. Peaks come from bench/perf/gpu_peaks.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.runtime.speed import SpeedOptions
from bench.runtime.strict_yaml import load_yaml

# Number formats of the network's products, as bench/perf/gpu_peaks.yaml lists their peaks.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class GPUPeak:
    """One entry of bench/perf/gpu_peaks.yaml: dense peak TFLOP/s by number format, and where it comes from."""

    name: str
    match: str  # a regular expression searched in torch.cuda.get_device_name()
    source: str
    tflops: dict[str, float]


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs that torch counts while ``fn(*args, **kwargs)`` runs (2 per multiply-add of matmuls, convolutions,
    attention)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def matmul_precision(device: torch.device, speed: SpeedOptions) -> str:
    """The number format of the network's products: autocast's dtype, TF32 on CUDA when asked, else fp32."""
    if speed.autocast is not None:
        return speed.autocast
    if speed.tf32 and device.type == "cuda":
        return "tf32"
    return "fp32"


@cache
def gpu_peaks() -> tuple[GPUPeak, ...]:
    """The entries of bench/perf/gpu_peaks.yaml, in file order."""
    data = load_yaml(resources.files("bench.perf").joinpath("gpu_peaks.yaml").read_text())
    return tuple(GPUPeak(e["name"], e["match"], e["source"], dict(e["tflops"])) for e in data["devices"])


def gpu_peak(device_name: str) -> GPUPeak | None:
    """The first entry whose ``match`` is found in ``device_name`` (torch.cuda.get_device_name), else None."""
    return next((peak for peak in gpu_peaks() if re.search(peak.match, device_name)), None)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of the named GPU in ``precision``; None for a GPU (or a CPU) the table lacks."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    peak = gpu_peak(device_name)
    return None if peak is None else peak.tflops[precision]
