"""What a run of python -m bench perf measures, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.config import DEFAULT_STATE_DTYPE, STATE_DTYPES
from bench.perf.networks import DEFAULT_MANIFESTS, NETWORKS
from bench.runtime.speed import SpeedOptions
from bench.samplers import SAMPLERS

CLOCKS = ("wall", "cpu")


@dataclass
class PerfOptions:
    """What ``run_perf`` measures; batch/steps of None take each network's entry in SIZES."""

    networks: tuple[str, ...] = NETWORKS
    batch: int | None = None
    steps: int | None = None
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    threads: int = 1
    samplers: tuple[str, ...] | None = None
    peer: bool = True
    clock: str = "wall"
    seed: int = 0
    noise_module: str = "bench.core.noise"
    state_dtype: str = DEFAULT_STATE_DTYPE
    manifests: Path = DEFAULT_MANIFESTS
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    cells: Path | None = None

    def __post_init__(self) -> None:
        self.networks = tuple(self.networks)
        bad = [n for n in self.networks if n not in NETWORKS]
        if bad or not self.networks:
            raise ValueError(f"networks {list(self.networks)} must be a non-empty subset of {list(NETWORKS)}")
        for name, low in (("batch", 1), ("steps", 1), ("repeats", 1), ("warmup", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock {self.clock!r} is not one of {list(CLOCKS)}")
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state dtype {self.state_dtype!r} is not one of {list(STATE_DTYPES)}")
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r} must be cpu or cuda[:index]")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available")
        if self.clock == "cpu" and device.type != "cpu":
            raise ValueError(f"clock 'cpu' measures host CPU time; use clock 'wall' on {self.device!r}")
        if self.samplers is not None:
            self.samplers = tuple(self.samplers)
            unknown = [s for s in self.samplers if s not in SAMPLERS]
            if unknown:
                raise ValueError(f"samplers {unknown} are not registered; registered: {sorted(SAMPLERS)}")
        if self.cells is not None and not Path(self.cells).is_file():
            raise ValueError(f"cells config {str(self.cells)!r} is not a file")
