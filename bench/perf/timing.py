"""Timing and memory of python -m bench perf: device-synchronised clocks, peak memory, interleaved medians."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class Clock:
    """Seconds by perf_counter after a device synchronisation (wall) or of process CPU time (cpu)."""

    def __init__(self, kind: str, device: torch.device):
        self.kind = kind
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.process_time() if self.kind == "cpu" else time.perf_counter()


class PeakMemory:
    """Peak memory (MiB) within a ``with`` block above the memory in use when it began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_allocated"
        elif _reset_rss_peak():
            self._start = _proc_status_kib("VmRSS") * 1024
            self.kind = "rss_hwm"
        else:
            self._start = 0
            self.kind = "ru_maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "rss_hwm":
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            # Linux reports kilobytes, macOS bytes; a process-wide peak, never reset.
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        self.mib = max(peak - self._start, 0) / 2**20


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
    except (OSError, ValueError):
        return False
    return True


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {key}")


@dataclass
class Timing:
    """Median seconds of one call, the largest peak memory of the timed calls, what ``count`` added."""

    seconds: float
    peak_mib: float | None
    mem_kind: str
    counted: int = 0


def measure_interleaved(
    tasks: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    clock: Clock,
    counts: dict[str, Callable[[], int]] | None = None,
) -> dict[str, Timing]:
    """Median time of each task over ``repeats`` rounds after ``warmup`` untimed ones.

    Each round calls every task once in turn, so that a drifting machine load (other processes,
    clock boost) affects all tasks alike and their ratios stay meaningful.
    """
    counts = counts or {}
    for _ in range(warmup):
        for fn in tasks.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in tasks}
    peaks: dict[str, list[PeakMemory]] = {key: [] for key in tasks}
    counted = dict.fromkeys(tasks, 0)
    for _ in range(repeats):
        for key, fn in tasks.items():
            before = counts[key]() if key in counts else 0
            with PeakMemory(clock.device) as peak:
                t0 = clock.now()
                fn()
                times[key].append(clock.now() - t0)
            peaks[key].append(peak)
            counted[key] += (counts[key]() - before) if key in counts else 0
    return {
        key: Timing(
            statistics.median(times[key]),
            max(p.mib for p in peaks[key]),
            peaks[key][0].kind,
            counted[key],
        )
        for key in tasks
    }


class TimedNetwork(nn.Module):
    """``net`` that adds the (synchronised) time of its calls to ``seconds``."""

    def __init__(self, net: nn.Module, clock: Clock):
        super().__init__()
        self.net = net
        self.clock = clock
        self.seconds = 0.0

    def forward(self, *args, **kwargs) -> torch.Tensor:
        t0 = self.clock.now()
        out = self.net(*args, **kwargs)
        self.seconds += self.clock.now() - t0
        return out


class TimedNoise:
    """A NoiseSource that adds the (synchronised) time of its draws to ``seconds``."""

    def __init__(self, noise, clock: Clock):
        self._noise = noise
        self._clock = clock
        self.seconds = 0.0

    def __getattr__(self, name: str):
        attr = getattr(self._noise, name)
        if name not in ("latent", "normal", "uniform"):
            return attr

        def timed(*args, **kwargs):
            t0 = self._clock.now()
            out = attr(*args, **kwargs)
            self.seconds += self._clock.now() - t0
            return out

        return timed
