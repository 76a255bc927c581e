"""Speed options for network evaluation, each off by default where it could change numbers.

Every option returns a record (a plain dict) for the provenance of the results it produced:
``apply_speed_options(net, options) -> (net, record)``. A wrapped network keeps the interface
``net(x, t) -> out`` and its parameters (``next(net.parameters())`` still gives their dtype).

What can change numbers, and by how much (tests/perf/test_speed.py checks these bounds):
- channels_last: other convolution algorithms; float32 outputs agree to 1e-5 of their scale.
- autocast: matmuls and convolutions in bf16 (unit roundoff 2^-8) or fp16 (2^-11); outputs
  agree to 16 roundoffs of their scale (6.3% for bf16, 0.8% for fp16) on the networks tested.
- TF32: float32 matmuls/convolutions on CUDA with a 10-bit mantissa. Off (both the matmul and
  the cuDNN flag, whose torch default is on) unless asked for.
- torch.compile and CUDA graphs run the same operations, up to kernel fusion (compile) that may
  reorder float sums.
- keep_freed_memory (glibc's malloc keeps freed memory instead of returning it to the kernel)
  changes no number, only page faults; it is process-wide and cannot be undone, so SpeedOptions
  leaves it off (the shipped configs turn it on for their sampling jobs, one process each; the
  Snakefile starts every job with the same thresholds, malloc_environment).

The DAG's sampling jobs apply a config's ``sampling.speed`` (bench.config.sampling_speed) and keep
the record in each shard; ``python -m bench perf`` takes the options as flags.
"""

from __future__ import annotations

import ctypes
import platform
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torch.compile modes that capture CUDA graphs themselves.
_COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
# glibc mallopt parameters (malloc.h) and the values keep_freed_memory sets, in this process by
# mallopt or in a new one by malloc_environment. 32 MiB is the largest mmap threshold that glibc
# before 2.35 accepts on 64-bit (malloc.c do_set_mmap_threshold: value <= HEAP_MAX_SIZE / 2; a
# larger MALLOC_MMAP_THRESHOLD_ is silently ignored there, while the trim threshold still freezes the
# mmap threshold at 128 KiB); glibc 2.35 removed the limit (bugzilla 27801).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20  # tensors up to 32 MiB come from the reused heap


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed options to use; the defaults change no number."""

    channels_last: bool = False
    tf32: bool = False
    compile_mode: str | None = None
    cuda_graphs: bool = False
    autocast: str | None = None
    keep_freed_memory: bool = False

    def __post_init__(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r} is not one of {list(COMPILE_MODES)}")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast dtype {self.autocast!r} is not one of {sorted(AUTOCAST_DTYPES)}")
        if self.cuda_graphs and self.compile_mode in _COMPILE_MODES_WITH_GRAPHS:
            raise ValueError(
                f"cuda_graphs=True with compile mode {self.compile_mode!r}: that mode already captures CUDA "
                "graphs; use one of them, or compile mode 'default' or 'max-autotune-no-cudagraphs'"
            )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inference_context() -> AbstractContextManager:
    """torch.inference_mode for sampling and metrics: no autograd graph, no version counters."""
    return torch.inference_mode()


def network_device(net: nn.Module) -> torch.device:
    """The device of the network's first parameter (cpu for a network without parameters)."""
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class NetworkWrapper(nn.Module):
    """A speed option's wrapper around ``net``: attributes it lacks are the wrapped network's.

    The families' adapters read attributes of the network they are given (EDM's sigma_min and
    sigma_data, NCSN's sigmas), so a wrapped network must still answer for them.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":  # not set yet (inside __init__): no wrapped network to ask
                raise
            return getattr(self.net, name)


def unwrap_network(net: nn.Module) -> nn.Module:
    """The network inside every speed-option wrapper and torch.compile module around ``net``."""
    while True:
        if isinstance(net, NetworkWrapper):
            net = net.net
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            net = net._orig_mod
        else:
            return net


class ChannelsLastInput(NetworkWrapper):
    """Feeds 4-D inputs to ``net`` in channels_last memory format (same values, other strides)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, *args, **kwargs)


class AutocastNetwork(NetworkWrapper):
    """Runs ``net`` under torch.autocast and returns float32, as the plain network would."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__(net)
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *args, **kwargs) -> torch.Tensor:
        # No weight cache: each forward is its own autocast region, and CUDA graph capture needs it off.
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            out = self.net(*args, **kwargs)
        return out.float()


class CUDAGraphNetwork(NetworkWrapper):
    """Replays one CUDA graph per input shape, captured on first use (fixed-shape sampling loops).

    Inputs are copied into static buffers, the graph is replayed, and its output is cloned, so
    callers may keep what they get. Only ``net(x, t)`` (no keyword arguments) is graphed.
    """

    def __init__(self, net: nn.Module, warmup: int = 3):
        super().__init__(net)
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, x.device)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x, t)
        graph, static_x, static_t, static_out = self._graphs[key]
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor) -> tuple:
        static_x, static_t = x.clone(), t.clone()
        # Warm-up on a side stream, as torch.cuda.graph requires: lazy inits and cuDNN autotuning
        # must not happen during capture.
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.net(static_x, static_t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.net(static_x, static_t)
        return graph, static_x, static_t, static_out


def set_tf32(enabled: bool, device: torch.device) -> dict[str, Any]:
    """Set both TF32 flags (process-wide) to ``enabled``; off also turns off cuDNN's default-on TF32."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    record: dict[str, Any] = {
        "enabled": enabled,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    if device.type != "cuda":
        record["note"] = f"TF32 only affects float32 matmuls/convolutions on CUDA; no effect on {device.type}"
    return record


def use_channels_last(net: nn.Module, enabled: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Convert 4-D weights and inputs to channels_last memory format."""
    if not enabled:
        return net, {"enabled": False}
    net = net.to(memory_format=torch.channels_last)
    weights = sum(1 for p in net.parameters() if p.ndim == 4)
    record: dict[str, Any] = {"enabled": True, "weights_4d": weights}
    if weights == 0:
        record["note"] = "the network has no 4-D weights: channels_last changes nothing"
    return ChannelsLastInput(net), record


def use_autocast(net: nn.Module, dtype_name: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """Run the network under torch.autocast with ``dtype_name`` ('bf16' or 'fp16'), or leave it as is."""
    if dtype_name is None:
        return net, {"enabled": False}
    if dtype_name not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast dtype {dtype_name!r} is not one of {sorted(AUTOCAST_DTYPES)}")
    dtype = AUTOCAST_DTYPES[dtype_name]
    device_type = network_device(net).type
    wrapped = AutocastNetwork(net, dtype, device_type)
    return wrapped, {"enabled": True, "dtype": str(dtype).removeprefix("torch."), "device_type": device_type}


def compile_network(net: nn.Module, mode: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """torch.compile the network with ``mode`` (compilation happens lazily, on the first call)."""
    if mode is None:
        return net, {"enabled": False}
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not one of {list(COMPILE_MODES)}")
    compiled = torch.compile(net, mode=mode)
    return compiled, {"enabled": True, "mode": mode, "backend": "inductor", "torch": torch.__version__}


def use_cuda_graphs(net: nn.Module, enabled: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Wrap the network in CUDAGraphNetwork on CUDA; elsewhere skip, saying why."""
    if not enabled:
        return net, {"enabled": False}
    device = network_device(net)
    if device.type != "cuda":
        reason = f"CUDA graphs need CUDA; the network is on {device}"
        return net, {"enabled": False, "requested": True, "skipped": reason}
    return CUDAGraphNetwork(net), {"enabled": True, "capture": "on first call per input shape"}


def keep_freed_memory(enabled: bool) -> dict[str, Any]:
    """Make glibc's malloc keep freed memory: trim threshold 1 GiB, mmap threshold 32 MiB (process-wide).

    A CPU forward pass frees and reallocates MiB-sized tensors on every call; with glibc's default
    thresholds many come back as fresh pages that the kernel faults in and zeroes, a large share of
    the embedded MLP's forward time at batch 1000.
    """
    if not enabled:
        return {"enabled": False}
    libc_name, version = platform.libc_ver()
    if libc_name != "glibc":
        reason = f"needs glibc's mallopt; libc is {libc_name or 'unknown'}"
        return {"enabled": False, "requested": True, "skipped": reason}
    libc = ctypes.CDLL("libc.so.6")
    thresholds = {"trim_threshold": TRIM_THRESHOLD, "mmap_threshold": MMAP_THRESHOLD}
    if not (libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
        raise RuntimeError(f"glibc {version} mallopt refused {thresholds}")
    return {"enabled": True, "libc": f"glibc {version}", **thresholds}


def malloc_environment() -> dict[str, str]:
    """keep_freed_memory's thresholds as the environment variables glibc reads when a process starts."""
    return {"MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


def apply_speed_options(net: nn.Module, options: SpeedOptions) -> tuple[nn.Module, dict[str, Any]]:
    """The network with ``options`` applied, and the provenance record of every option."""
    record = {
        "tf32": set_tf32(options.tf32, network_device(net)),
        "keep_freed_memory": keep_freed_memory(options.keep_freed_memory),
    }
    net, record["channels_last"] = use_channels_last(net, options.channels_last)
    net, record["autocast"] = use_autocast(net, options.autocast)
    net, record["compile"] = compile_network(net, options.compile_mode)
    net, record["cuda_graphs"] = use_cuda_graphs(net, options.cuda_graphs)
    return net, record
