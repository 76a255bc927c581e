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

import time

import torch

from bench.device import DeviceChoice, device_label, select_device

GPU_HELD_WALL = "gpu_held_wall"
PROCESS_CPU = "process_cpu"


class StepClock:
    """Wall and device seconds of one step on one device, from construction to ``record()``."""

    def __init__(self, choice: DeviceChoice) -> None:
        self.choice = choice
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    @classmethod
    def start(cls) -> StepClock:
        """Choose this process's device (bench.device.select_device), make it current, start timing."""
        choice = select_device()
        if choice.device.type == "cuda":
            # Libraries that call .cuda() without an index (torch-fidelity) then use the claimed GPU.
            torch.cuda.set_device(choice.device)
        return cls(choice)

    @property
    def device(self) -> torch.device:
        return self.choice.device

    def record(self) -> dict[str, str | float]:
        """device, device_detail, wall_seconds, device_seconds and device_clock, measured up to now."""
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._wall0
        return {
            "device": device_label(self.choice),
            "device_detail": self.choice.description,
            "wall_seconds": wall,
            "device_seconds": wall if on_gpu else time.process_time() - self._cpu0,
            "device_clock": GPU_HELD_WALL if on_gpu else PROCESS_CPU,
        }
