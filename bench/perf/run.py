"""A run of python -m bench perf: every network's bare forward, sampler loops and peer loops, then a config's cells."""

from __future__ import annotations

import importlib
import json
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.perf.cells import measure_cells
from bench.perf.network_flops import count_flops, matmul_precision, peak_tflops
from bench.perf.networks import SIZES, build_perf_network
from bench.perf.options import PerfOptions
from bench.perf.rows import PerfRow
from bench.perf.sampler_loops import SCHEDULE, diffusers_version, peer_loop, plan_samplers
from bench.perf.timing import Clock, TimedNetwork, TimedNoise, Timing, measure_interleaved
from bench.runtime.speed import apply_speed_options, inference_context, unwrap_network


def run_perf(options: PerfOptions) -> list[PerfRow]:
    """Measure every network of ``options`` (see bench.perf.cli); returns the table's rows."""
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
