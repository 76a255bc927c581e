"""The device a step computed on and how long it held it: the provenance fields of every step's record.

Every step that runs a network starts a StepClock right after choosing its device and adds
``clock.record()`` to its output. Two durations cover the same interval (device chosen -> record):

- ``wall_seconds``: wall-clock seconds.
- ``device_seconds``: the time the step held its device. On CUDA the GPU is claimed for the whole
  interval, so it is the wall time after a device synchronisation (``device_clock`` =
  ``gpu_held_wall``). On the CPU it is the process's CPU time, user + system over all threads
  (``device_clock`` = ``process_cpu``): the core-seconds the step used, which on a shared machine is
  less than its wall time and with several threads can exceed it.
"""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from bench.runtime.device import DeviceChoice

GPU_HELD_WALL = "gpu_held_wall"
PROCESS_CPU = "process_cpu"


class StepClock:
    """Wall and device seconds of one step on one device, from construction to ``record()``."""

    def __init__(self, choice: DeviceChoice | None) -> None:
        """``choice``: the step's device; None for a step on the host alone (``on_host``)."""
        self.choice = choice
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    @classmethod
    def start(cls) -> StepClock:
        """Choose this process's device (bench.runtime.device.select_device), make it current, start timing."""
        import torch

        from bench.runtime.device import select_device

        choice = select_device()
        if choice.device.type == "cuda":
            # Libraries that call .cuda() without an index (torch-fidelity) then use the claimed GPU.
            torch.cuda.set_device(choice.device)
        return cls(choice)

    @classmethod
    def on_host(cls) -> StepClock:
        """A clock for a step that runs no network (numpy on the CPU): it imports no torch, claims no GPU."""
        return cls(None)

    @property
    def device(self) -> torch.device:
        if self.choice is None:
            raise RuntimeError("a host-only StepClock (StepClock.on_host) has no torch device")
        return self.choice.device

    def record(self) -> dict[str, str | float]:
        """device, device_detail, wall_seconds, device_seconds and device_clock, measured up to now."""
        if self.choice is None:
            device, detail, on_gpu = "cpu", f"cpu ({platform.processor() or platform.machine()}, numpy)", False
        else:
            from bench.runtime.device import device_label

            device, detail, on_gpu = device_label(self.choice), self.choice.description, self.device.type == "cuda"
        if on_gpu:
            import torch

            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._wall0
        return {
            "device": device,
            "device_detail": detail,
            "wall_seconds": wall,
            "device_seconds": wall if on_gpu else time.process_time() - self._cpu0,
            "device_clock": GPU_HELD_WALL if on_gpu else PROCESS_CPU,
        }
