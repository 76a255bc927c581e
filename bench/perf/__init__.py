"""``python -m bench perf``: what our sampler loops cost beside the network, and beside diffusers' loop.

In one process, on the same denoiser, for each network it measures: the bare network forward per
batch; every registered sampler that runs on a plain eps network (others get a row saying why
they were skipped), as time per network evaluation (NFE) and its overhead over the bare forward;
for DDPM and DDIM the same sampler run through diffusers' ``set_timesteps`` + ``step`` loop on the
same network and timesteps; images per second and peak memory. Times are medians over repeats
after warm-up, device-synchronised; the loops of one network run in interleaved rounds, so that a
drifting machine load affects them alike. An extra instrumented run splits a sample run into network
calls, noise draws and the rest (our arithmetic). Networks have random weights (seeded). Then every
(model, sampler) pair of a config (default: the embedded default) on that model's own network and
family denoiser, as the DAG runs it (bench.perf.cells).

Columns of results/perf.csv (rows are appended; the rows of one run share run_id):
  run_id            UTC time the run started (ISO 8601)
  device            cpu | cuda
  device_name       CPU model or GPU name
  torch             torch version
  diffusers         diffusers version, '' when not installed
  threads           torch intra-op threads
  clock             wall: device-synchronised perf_counter; cpu: process CPU seconds (CPU only)
  network           mlp | ddpm_unet | adm_unet | edm_songunet | cell:<model> (a config's model, bench.perf.cells)
  shape             one sample, C x H x W
  batch             samples per network call
  loop              network (bare forward) | ours (bench.samplers) | diffusers (the peer loop)
  sampler           registry name ('' on network rows)
  steps             grid length
  nfe               network calls per sample run
  ms_per_nfe        network rows: median forward time; loops: median sample-run time / nfe
  overhead_pct      100 (ms_per_nfe / network ms_per_nfe - 1): what a loop adds per network call
                    (cell rows: 100 (run time / network time inside the same run - 1))
  ours_over_peer    ours rows: our median sample-run time / diffusers' on the same timesteps
  images_per_s      batch / median sample-run time (network rows: / forward time)
  peak_mem_mib      largest peak memory of a timed call above the memory in use when it started
  mem_kind          cuda_max_allocated | rss_hwm (Linux VmHWM, reset first) | ru_maxrss (process peak)
  net_pct           ours rows, instrumented run: share of network calls
  noise_pct         ... share of NoiseSource draws
  arith_pct         ... the rest: the sampler's and the denoiser's tensor arithmetic, Python
  peer_max_rel_diff max |x0_ours - x0_peer| / max |x0_peer| for deterministic samplers (DDIM, eta=0)
  gflop_per_nfe     network FLOPs per call, torch's count (bench.perf.network_flops: 2 per multiply-add of
                    matmuls, convolutions, attention)
  tflops            gflop_per_nfe / ms_per_nfe: the rate at which the row turns network FLOPs
  precision         number format of the network's products: fp32 | tf32 | bf16 | fp16
  peak_tflops       the GPU's dense peak in that format (bench/perf/gpu_peaks.yaml; '' on a CPU or unknown GPU)
  peak_pct          100 tflops / peak_tflops
  repeats, warmup   timed runs per median, untimed runs before them
  noise_module      module whose NoiseSource our samplers drew from
  state_dtype       dtype of our samplers' state and noise (the config's sampling.state_dtype)
  speed             JSON record of the bench.runtime.speed options applied to the network
  note              why a sampler was skipped, and other remarks
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import DEFAULT_STATE_DTYPE, STATE_DTYPES, read_yaml
from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.perf.cells import measure_cells, redraw_zero_parameters
from bench.perf.network_flops import count_flops, gpu_peak, matmul_precision, peak_tflops
from bench.runtime.io import atomic_text
from bench.runtime.speed import COMPILE_MODES, SpeedOptions, apply_speed_options, inference_context, unwrap_network
from bench.samplers import SAMPLER_SPECS, SAMPLERS
from bench.samplers.spec import PeerSpec

NETWORKS = ("mlp", "ddpm_unet", "adm_unet", "edm_songunet")
CLOCKS = ("wall", "cpu")
DEFAULT_MANIFESTS = Path(__file__).resolve().parents[2] / "tests" / "manifests"
DEFAULT_OUT = Path("results/perf.csv")
DEFAULT_CELLS = Path(__file__).resolve().parents[2] / "workflows" / "config" / "default.yaml"
# (batch, steps) per network: the embedded sampling batch, and a CPU-sized one at CIFAR-10 scale.
SIZES = {"mlp": (1000, 10), "ddpm_unet": (2, 4), "adm_unet": (2, 4), "edm_songunet": (2, 4)}
MANIFESTS = {
    "ddpm_unet": "ddim_cifar10.json",
    "adm_unet": "iddpm_cifar10.json",
    "edm_songunet": "edm_songunet_ddpmpp_cifar10.json",
}
SCHEDULE = ("linear", 1000)


# Our sampler options are the embedded config's (workflows/config/default.yaml: ddpm_beta, ddim_eta0).
PEERS = {name: spec.peer for name, spec in SAMPLER_SPECS.items() if spec.peer is not None}
DEFAULT_GRID = "uniform"

COLUMNS = (
    "run_id", "device", "device_name", "torch", "diffusers", "threads", "clock", "network", "shape", "batch",
    "loop", "sampler", "steps", "nfe", "ms_per_nfe", "overhead_pct", "ours_over_peer", "images_per_s",
    "peak_mem_mib", "mem_kind", "net_pct", "noise_pct", "arith_pct", "peer_max_rel_diff", "gflop_per_nfe",
    "tflops", "precision", "peak_tflops", "peak_pct", "repeats", "warmup", "noise_module", "state_dtype", "speed",
    "note",
)


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


@dataclass
class PerfRow:
    """One line of the table and of results/perf.csv (see the module docstring for the columns)."""

    network: str
    shape: str
    batch: int
    loop: str
    sampler: str = ""
    steps: int | None = None
    nfe: int | None = None
    ms_per_nfe: float | None = None
    overhead_pct: float | None = None
    ours_over_peer: float | None = None
    images_per_s: float | None = None
    peak_mem_mib: float | None = None
    mem_kind: str = ""
    net_pct: float | None = None
    noise_pct: float | None = None
    arith_pct: float | None = None
    peer_max_rel_diff: float | None = None
    gflop_per_nfe: float | None = None
    tflops: float | None = None
    peak_tflops: float | None = None
    peak_pct: float | None = None
    note: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def set_throughput(self, flop_per_nfe: int, peak: float | None) -> None:
        """The network FLOPs per NFE, the rate at which this row turns them (TFLOP/s) and its share of ``peak``."""
        self.gflop_per_nfe = flop_per_nfe / 1e9
        if self.ms_per_nfe:
            self.tflops = flop_per_nfe / (self.ms_per_nfe * 1e-3) / 1e12
            if peak:
                self.peak_tflops, self.peak_pct = peak, 100.0 * self.tflops / peak

    def as_record(self) -> dict[str, str]:
        """The CSV row: the run context, then this row's values; None is written as ''."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "context"}
        merged = {**self.context, **values}
        return {c: _csv_value(merged.get(c)) for c in COLUMNS}


# ---------------------------------------------------------------------------------------------
# Networks with random weights, as plain eps networks net(x, t)


class EpsChannels(nn.Module):
    """The first ``channels`` output channels: the eps of a network that also predicts variances (iDDPM)."""

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.net = net
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)[:, : self.channels]


class EDMAsEps(nn.Module):
    """eps of an EDM denoiser on the VP chain: x_n / sqrt(abar_n) = y + sigma_n eps (EDM Eq. 4, Table 1 VP).

    sigma_n = sqrt((1 - abar_n) / abar_n) and eps = (x_n / sqrt(abar_n) - D(x_n / sqrt(abar_n); sigma_n)) / sigma_n.
    """

    def __init__(self, precond: nn.Module, alpha_bars: torch.Tensor):
        super().__init__()
        self.precond = precond
        self.register_buffer("alpha_bars", alpha_bars.to(torch.float32))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alpha_bars[t.round().long()].reshape(-1, 1, 1, 1)
        sigma = ((1.0 - abar) / abar).sqrt()
        y = x / abar.sqrt()
        return (y - self.precond(y, sigma.flatten())) / sigma


def build_perf_network(
    name: str, schedule: DiscreteSchedule, *, seed: int = 0, manifests: Path = DEFAULT_MANIFESTS
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A network with random weights as a plain eps network, in eval mode, and its sample shape.

    Output layers that their code zero-initialises are redrawn, so outputs depend on the input
    (which the peer comparison needs; costs do not change).
    """
    if name not in NETWORKS:
        raise ValueError(f"network {name!r} is not one of {list(NETWORKS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            from bench.nets.factory import build_network

            # The embedded default's own network (models.mlp.network), whatever its size.
            network = read_yaml(DEFAULT_CELLS)["models"]["mlp"]["network"]
            net: nn.Module = build_network(network, channels=1, image_size=8)
            shape = (1, 8, 8)
        else:
            kwargs = _manifest(manifests, name)["constructor_kwargs"]
            shape = (3, 32, 32)
            if name == "ddpm_unet":
                from bench.nets.ddpm_unet import DDPMUNet

                net = DDPMUNet.from_config(kwargs["config"])
            elif name == "adm_unet":
                from bench.nets.adm_unet import ADMUNet

                net = EpsChannels(ADMUNet(**kwargs), channels=3)
            else:
                from bench.nets.edm_networks import build_edm_network

                net = EDMAsEps(build_edm_network(kwargs), schedule.alpha_bars)
        redraw_zero_parameters(net)
    return net.eval().requires_grad_(False), shape


def _manifest(directory: Path, name: str) -> dict:
    path = Path(directory) / MANIFESTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"network {name!r} needs its manifest {path}; pass the manifests folder (--manifests)")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# Which registered samplers run on a plain eps denoiser


@dataclass(frozen=True)
class SamplerPlan:
    """A sampler to measure (skip == '') or to list with the reason it is skipped."""

    name: str
    fn: Callable | None
    grid: str
    options: dict[str, Any]
    peer: PeerSpec | None
    skip: str = ""


def plan_samplers(names: tuple[str, ...] | None = None) -> list[SamplerPlan]:
    """Every registered sampler (or those named), each either runnable on a plain eps network or skipped with a note.

    A sampler is skipped when its signature has required options, or when a 2-step trial on a
    tiny eps network raises or gives no finite sample of the right shape.
    """
    plans = []
    for name in names if names is not None else tuple(SAMPLERS):
        fn = SAMPLERS[name]
        peer = PEERS.get(name)
        grid = peer.grid if peer else DEFAULT_GRID
        options = dict(peer.options) if peer else {}
        required = _required_options(fn)
        if required:
            skip = f"skipped: needs option(s) {', '.join(required)}"
        else:
            skip = _trial(fn, grid, options)
        plans.append(SamplerPlan(name, fn, grid, options, peer, skip))
    return plans


def _required_options(fn: Callable) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[3:]
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.name != "noise"
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _trial(fn: Callable, grid_kind: str, options: dict[str, Any]) -> str:
    from bench.core.noise import NoiseSource
    from bench.nets.mlp import MLPDenoiser

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MLPDenoiser(width=8, depth=1, emb_dim=4).eval().requires_grad_(False)
    schedule = DiscreteSchedule.named(*SCHEDULE)
    denoiser = DiscreteEpsDenoiser(net, schedule)
    noise = NoiseSource(torch.arange(2), (1, 8, 8), torch.float64, "cpu")
    # Any failure means the sampler needs another denoiser interface: report it, do not stop.
    try:
        with inference_context():
            x = fn(denoiser, noise.latent(), time_grid(grid_kind, schedule.T, 2), noise=noise, **options)
    except Exception as err:
        return f"skipped: does not run on a plain eps denoiser ({type(err).__name__}: {err})"
    if not isinstance(x, torch.Tensor) or x.shape != (2, 1, 8, 8) or not torch.isfinite(x).all() or not denoiser.nfe:
        return "skipped: no finite sample of the input's shape from a plain eps denoiser"
    return ""


# ---------------------------------------------------------------------------------------------
# Timing and memory


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


# ---------------------------------------------------------------------------------------------
# The peer loop: diffusers' schedulers on the same network and timesteps


def diffusers_version() -> str:
    try:
        return importlib.import_module("diffusers").__version__
    except ImportError:
        return ""


def peer_loop(
    spec: PeerSpec, net: nn.Module, schedule: DiscreteSchedule, grid: torch.Tensor, x_T: torch.Tensor, *, seed: int
) -> Callable[[], torch.Tensor]:
    """A function running diffusers' ``set_timesteps`` + ``step`` loop from x_T (float32, as diffusers keeps it)."""
    import diffusers

    options = spec.options
    common = {
        "num_train_timesteps": schedule.T,
        "trained_betas": schedule.betas.numpy(),
        "clip_sample": options["clip_x0"],
        "prediction_type": "epsilon",
    }
    step_kwargs: dict[str, Any] = {}
    if spec.scheduler == "DDIMScheduler":
        scheduler = diffusers.DDIMScheduler(
            **common, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
        scheduler.set_timesteps(len(grid))
        step_kwargs["eta"] = options["eta"]
    elif spec.scheduler == "DDPMScheduler":
        variance_type = {"beta": "fixed_large", "beta_tilde": "fixed_small"}[options["variance"]]
        scheduler = diffusers.DDPMScheduler(**common, variance_type=variance_type)
        scheduler.set_timesteps(timesteps=grid.flip(0).tolist())
    else:
        raise ValueError(f"peer scheduler {spec.scheduler!r} is not one of ['DDIMScheduler', 'DDPMScheduler']")
    timesteps = scheduler.timesteps.cpu()
    if not torch.equal(timesteps, grid.flip(0)):
        raise ValueError(
            f"diffusers' {spec.scheduler} visits {timesteps.tolist()}, not our grid {grid.flip(0).tolist()}: "
            "pick steps so that the grids agree (for DDIM's leading spacing, a divisor of T)"
        )
    x_start = x_T.to(torch.float32)
    generator = torch.Generator(x_T.device).manual_seed(seed)
    batch = x_T.shape[0]

    def run() -> torch.Tensor:
        x = x_start
        for t in scheduler.timesteps:
            eps = net(x, torch.full((batch,), float(t), device=x.device))
            x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        return x

    return run


# ---------------------------------------------------------------------------------------------
# The run


def run_perf(options: PerfOptions) -> list[PerfRow]:
    """Measure every network of ``options`` (see the module docstring); returns the table's rows."""
    device = torch.device(options.device)
    noise_cls = getattr(importlib.import_module(options.noise_module), "NoiseSource", None)
    if noise_cls is None:
        raise ValueError(f"noise module {options.noise_module!r} has no NoiseSource")
    plans = plan_samplers(options.samplers)
    schedule = DiscreteSchedule.named(*SCHEDULE)
    clock = Clock(options.clock, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    context = {
        "run_id": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers_version() if options.peer else "",
        "threads": options.threads,
        "clock": options.clock,
        "repeats": options.repeats,
        "warmup": options.warmup,
        "noise_module": options.noise_module,
        "state_dtype": options.state_dtype,
        "precision": matmul_precision(device, options.speed),
    }
    rows: list[PerfRow] = []
    try:
        with inference_context():
            for name in options.networks:
                rows += _measure_network(name, options, plans, schedule, clock, noise_cls, context)
            if options.cells is not None:
                batch, steps = options.batch or SIZES["mlp"][0], options.steps or SIZES["mlp"][1]
                rows += measure_cells(options.cells, K=steps, batch=batch, repeats=options.repeats,
                                      warmup=options.warmup, clock=clock, seed=options.seed,
                                      state_dtype=getattr(torch, options.state_dtype),
                                      context={**context, "speed": json.dumps({}), "noise_module": "bench.core.noise"})
    finally:
        torch.set_num_threads(threads)
    return rows


def _measure_network(name, options, plans, schedule, clock, noise_cls, context) -> list[PerfRow]:
    device = clock.device
    net, shape = build_perf_network(name, schedule, seed=options.seed, manifests=options.manifests)
    net, speed = apply_speed_options(net.to(device), options.speed)
    batch, steps = (options.batch or SIZES[name][0]), (options.steps or SIZES[name][1])
    context = {**context, "speed": json.dumps(speed, sort_keys=True)}
    base = {"network": name, "shape": "x".join(map(str, shape)), "batch": batch, "context": context}
    seeds = torch.arange(batch, dtype=torch.int64) + options.seed
    state_dtype = getattr(torch, options.state_dtype)
    x_T = noise_cls(seeds, shape, state_dtype, device).latent()
    x32, t = x_T.to(torch.float32), torch.full((batch,), float(schedule.T // 2), device=device)
    peer_available = diffusers_version() != ""
    # Counted on the network inside the speed options' wrappers: they change how, not what, it computes.
    flop_per_nfe = count_flops(unwrap_network(net), x32, t)
    peak = peak_tflops(context["device_name"], context["precision"]) if device.type == "cuda" else None

    tasks: dict[str, Callable[[], Any]] = {"network": lambda: net(x32, t)}
    counts: dict[str, Callable[[], int]] = {}
    runs = {}
    for plan in plans:
        if plan.skip:
            continue
        grid = time_grid(plan.grid, schedule.T, steps)
        denoiser = DiscreteEpsDenoiser(net, schedule)
        noise = noise_cls(seeds, shape, state_dtype, device)

        def ours(denoiser=denoiser, noise=noise, plan=plan, grid=grid) -> torch.Tensor:
            return plan.fn(denoiser, x_T, grid, noise=noise, **plan.options)

        tasks["ours:" + plan.name] = ours
        counts["ours:" + plan.name] = lambda d=denoiser: d.nfe
        theirs = None
        if plan.peer is not None and options.peer and peer_available:
            theirs = peer_loop(plan.peer, net, schedule, grid, x_T, seed=options.seed)
            tasks["diffusers:" + plan.name] = theirs
        runs[plan.name] = (grid, noise, ours, theirs)
    timings = measure_interleaved(tasks, repeats=options.repeats, warmup=options.warmup, clock=clock, counts=counts)

    bare = timings["network"].seconds
    rows = [PerfRow(**base, loop="network", nfe=1, **_rates(timings["network"], 1, bare, batch))]
    for plan in plans:
        if plan.skip:
            rows.append(PerfRow(**base, loop="ours", sampler=plan.name, note=plan.skip))
            continue
        grid, noise, ours, theirs = runs[plan.name]
        timing = timings["ours:" + plan.name]
        nfe = timing.counted // options.repeats
        row = PerfRow(
            **base, loop="ours", sampler=plan.name, steps=len(grid), nfe=nfe, **_rates(timing, nfe, bare, batch)
        )
        row.net_pct, row.noise_pct, row.arith_pct = _breakdown(ours, net, schedule, noise, clock, options.repeats)
        rows.append(row)
        if plan.peer is not None and options.peer and not peer_available:
            row.note = "no peer: diffusers is not installed (pip install '.[perf]')"
        if theirs is None:
            continue
        peer_timing = timings["diffusers:" + plan.name]
        row.ours_over_peer = timing.seconds / peer_timing.seconds
        peer_row = PerfRow(
            **base,
            loop="diffusers",
            sampler=plan.name,
            steps=len(grid),
            nfe=nfe,
            note=f"diffusers.{plan.peer.scheduler}, float32 state",
            **_rates(peer_timing, nfe, bare, batch),
        )
        if plan.peer.deterministic:
            ref = theirs().to(torch.float64)
            peer_row.peer_max_rel_diff = float((ours() - ref).abs().max() / ref.abs().max())
        rows.append(peer_row)
    for row in rows:
        row.set_throughput(flop_per_nfe, peak)
    return rows


def _rates(timing: Timing, nfe: int, bare: float, batch: int) -> dict[str, Any]:
    per_nfe = timing.seconds / nfe
    return {
        "ms_per_nfe": 1e3 * per_nfe,
        "overhead_pct": 100.0 * (per_nfe / bare - 1.0),
        "images_per_s": batch / timing.seconds,
        "peak_mem_mib": timing.peak_mib,
        "mem_kind": timing.mem_kind,
    }


def _breakdown(ours: Callable, net, schedule, noise, clock: Clock, repeats: int) -> tuple[float, float, float]:
    """Shares (%) of network calls, noise draws and the rest in ``repeats`` instrumented sample runs."""
    timed_net, timed_noise = TimedNetwork(net, clock), TimedNoise(noise, clock)
    denoiser = DiscreteEpsDenoiser(timed_net, schedule)
    total = 0.0
    for _ in range(repeats):
        t0 = clock.now()
        ours(denoiser=denoiser, noise=timed_noise)
        total += clock.now() - t0
    net_pct, noise_pct = 100 * timed_net.seconds / total, 100 * timed_noise.seconds / total
    return net_pct, noise_pct, 100.0 - net_pct - noise_pct


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# Output


def format_table(rows: list[PerfRow]) -> str:
    """The rows as an aligned text table, one line per row, a legend line last."""
    header = (
        "network", "batch", "loop", "sampler", "nfe", "ms/NFE", "overhead%", "ours/peer", "img/s", "peakMiB",
        "net%", "noise%", "arith%", "peer_diff", "TFLOP/s", "%peak", "note",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.network, str(r.batch), r.loop, r.sampler, _fmt(r.nfe), _fmt(r.ms_per_nfe, ".3g"),
                _fmt(r.overhead_pct, "+.1f"), _fmt(r.ours_over_peer, ".2f"), _fmt(r.images_per_s, ".4g"),
                _fmt(r.peak_mem_mib, ".1f"), _fmt(r.net_pct, ".1f"), _fmt(r.noise_pct, ".1f"),
                _fmt(r.arith_pct, ".1f"), _fmt(r.peer_max_rel_diff, ".1e"), _fmt(r.tflops, ".3g"),
                _fmt(r.peak_pct, ".1f"), r.note,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {1, *range(4, 16)}
    text = [
        "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]
    ctx = rows[0].context if rows else {}
    text.append(
        f"{ctx.get('device_name', '')}; torch {ctx.get('torch', '')}, diffusers {ctx.get('diffusers') or '-'}; "
        f"{ctx.get('threads', '')} thread(s); {ctx.get('clock', '')} clock; medians of {ctx.get('repeats', '')} "
        f"after {ctx.get('warmup', '')} warm-up; noise from {ctx.get('noise_module', '')}; "
        f"{ctx.get('precision', '')} products, %peak of {_peak_label(ctx.get('device_name', ''), ctx.get('device'))}"
    )
    return "\n".join(line.rstrip() for line in text)


def _peak_label(device_name: str, device: str | None) -> str:
    """Which peak the %peak column divides by, or why it is empty."""
    if device != "cuda":
        return "none (a CPU has no entry in gpu_peaks.yaml)"
    peak = gpu_peak(device_name)
    if peak is None:
        return f"none ({device_name!r} is not in gpu_peaks.yaml)"
    return f"the {peak.name} datasheet ({peak.source})"


def append_csv(rows: list[PerfRow], path: Path) -> Path:
    """Append the rows to the CSV at ``path`` (created with a header), replacing the file atomically."""
    path = Path(path)
    existing = path.read_text() if path.exists() else ""
    if existing:
        found = next(csv.reader(io.StringIO(existing)), [])
        if tuple(found) != COLUMNS:
            raise ValueError(f"{path} has columns {found}, not the perf columns {list(COLUMNS)}; move it aside")
        if not existing.endswith("\n"):
            existing += "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerows(r.as_record() for r in rows)
    return atomic_text(existing + buffer.getvalue(), path)


def _fmt(value, spec: str = "d") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench perf", description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS),
                   help="networks to time, with random weights (default: all)")
    p.add_argument("--batch", type=int, help="samples per call (default: per network, " + str(SIZES) + ")")
    p.add_argument("--steps", type=int, help="sampler steps K (default: per network)")
    p.add_argument("--samplers", nargs="+", help=f"registered samplers to measure (default: all of {sorted(SAMPLERS)})")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--clock", choices=CLOCKS, default="wall", help="what a run's seconds measure")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of sample 0's noise")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip diffusers' loops")
    p.add_argument("--noise-module", default="bench.core.noise", help="module providing NoiseSource")
    p.add_argument("--state-dtype", choices=STATE_DTYPES, default=DEFAULT_STATE_DTYPE,
                   help="dtype of the samplers' state and noise (the config's sampling.state_dtype)")
    p.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS, help="folder of the network manifests")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    p.add_argument("--cells", "--configfile", "--config", dest="cells", type=Path, default=DEFAULT_CELLS,
                   help="config whose (model, sampler) pairs are timed on their own networks (default %(default)s)")
    p.add_argument("--no-cells", dest="cells", action="store_const", const=None, help="skip the config's pairs")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only")
    speed = p.add_argument_group("speed options (all off by default)")
    speed.add_argument("--channels-last", action="store_true", help="4-D weights and inputs in channels-last format")
    speed.add_argument("--tf32", action="store_true", help="TF32 matmuls and convolutions on CUDA")
    speed.add_argument("--compile", dest="compile_mode", choices=COMPILE_MODES, help="torch.compile with this mode")
    speed.add_argument("--cuda-graphs", action="store_true", help="replay one CUDA graph per batch shape (CUDA only)")
    speed.add_argument("--autocast", choices=("bf16", "fp16"), help="autocast the network to this dtype")
    speed.add_argument("--keep-freed-memory", action="store_true", help="glibc malloc keeps freed memory")
    return p


def options_from_args(args: argparse.Namespace) -> PerfOptions:
    speed = SpeedOptions(
        channels_last=args.channels_last,
        tf32=args.tf32,
        compile_mode=args.compile_mode,
        cuda_graphs=args.cuda_graphs,
        autocast=args.autocast,
        keep_freed_memory=args.keep_freed_memory,
    )
    return PerfOptions(
        networks=tuple(args.networks),
        batch=args.batch,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
        samplers=tuple(args.samplers) if args.samplers else None,
        peer=args.peer,
        clock=args.clock,
        seed=args.seed,
        noise_module=args.noise_module,
        state_dtype=args.state_dtype,
        manifests=args.manifests,
        speed=speed,
        cells=args.cells,
    )


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, append the rows to --out; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    rows = run_perf(options)
    print(format_table(rows))
    if args.write:
        print(f"appended {len(rows)} rows to {append_csv(rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
