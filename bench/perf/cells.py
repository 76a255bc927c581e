"""The sampler cost of every (model, sampler) pair of a config, on the model's own network and family denoiser.

``python -m bench perf`` times the registry's samplers on a plain eps network; this part times the
samplers as a run uses them: each trained model of the config (its network with random weights, its
schedule and family denoiser: DDGM's noise law, EDM's preconditioning, iDDPM's learned variance, the
VE score) with each sampler of its experiments, through the same view the DAG's sample step gives it
(``bench.steps.sample.sampler_view``: the sigma conversion for EDM's samplers on a VP chain, the levels
of Langevin and PC), with the config's sampling.speed options applied to the network. A sample run
is instrumented: the time inside network calls, inside noise draws, and the rest; the overhead is
the rest over the network time of the same run, so it needs no separate bare-forward timing and is
unaffected by a drifting machine load. Samplers that read the Analytic-DPM moments get a constant
Gamma_n stand-in (their cost does not depend on its values).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import cells, load_config, sampling_speed
from bench.core.noise import NoiseSource
from bench.families import build_schedule, make_denoiser
from bench.methods.analytic import BoundTerms
from bench.nets.factory import build_network
from bench.perf.network_flops import count_flops, matmul_precision, peak_tflops
from bench.perf.rows import PerfRow
from bench.perf.timing import TimedNetwork, TimedNoise
from bench.runtime.speed import SpeedOptions, apply_speed_options
from bench.samplers import get_sampler, needs_moments
from bench.steps.sample import sampler_options, sampler_view

# Gamma_n = E||eps_hat||^2 / d of a stand-in model: inside (0, 1), where Theorem 2's clipping keeps it.
GAMMA_STAND_IN = 0.9


def redraw_zero_parameters(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Redraw the parameters their code zero-initialises (output layers), so that outputs depend on inputs."""
    with torch.no_grad():
        for p in net.parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, std)
    return net


def data_shape(dataset: dict) -> tuple[int, ...]:
    """(channels, height, width) of a dataset config, read from its test split."""
    from bench.data import load_dataset

    return tuple(load_dataset(dataset, "test").images.shape[1:])


def config_pairs(cfg: dict) -> list[tuple[str, str]]:
    """(model, sampler) of every cell of a trained model, in the config's order, each pair once."""
    seen: dict[tuple[str, str], None] = {}
    for cell in cells(cfg):
        if "network" in cfg["models"][cell.model]:
            seen[(cell.model, cell.sampler)] = None
    return list(seen)


def measure_cells(
    config: Path | dict,
    *,
    K: int,
    batch: int,
    repeats: int,
    warmup: int,
    clock,
    seed: int = 0,
    state_dtype: torch.dtype = torch.float32,
    context: dict[str, Any],
) -> list:
    """One bench.perf.rows.PerfRow per (model, sampler) of ``config``: K steps on ``batch`` samples."""
    cfg = load_config(config, check_paths=False) if not isinstance(config, dict) else config
    device = clock.device
    options = SpeedOptions(**sampling_speed(cfg))
    precision = matmul_precision(device, options)
    peak = peak_tflops(context["device_name"], precision) if device.type == "cuda" else None
    rows = []
    # One network and denoiser per model, shared by its samplers (each run counts its own NFE and seconds).
    built: dict[str, tuple] = {}
    # The network's FLOPs per call, the same for every sampler of a model: counted on the model's first pair.
    flops: dict[str, int] = {}
    for model_name, sampler_name in config_pairs(cfg):
        model = cfg["models"][model_name]
        sampler = dict(cfg["samplers"][sampler_name])
        if model_name not in built:
            shape = data_shape(cfg["datasets"][model["dataset"]])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = build_network(model["network"], channels=shape[0], image_size=shape[1])
            net = redraw_zero_parameters(net).eval().requires_grad_(False).to(device)
            schedule = build_schedule(model["schedule"])
            plain = make_denoiser(model["family"], net, schedule, shape, noise=model.get("noise"))
            net, speed = apply_speed_options(net, options)
            timed_net = TimedNetwork(net, clock)
            denoiser = make_denoiser(model["family"], timed_net, schedule, shape, noise=model.get("noise"))
            built[model_name] = shape, schedule, timed_net, denoiser, plain, json.dumps(speed, sort_keys=True)
        shape, schedule, timed_net, denoiser, plain, speed_json = built[model_name]
        gamma = (
            torch.full((schedule.T,), GAMMA_STAND_IN, dtype=torch.float64) if needs_moments(sampler) else None
        )
        if sampler.get("inputs", {}).get("gamma") == "moments":
            sampler["options"] = {**sampler.get("options", {}), "gamma": gamma}
        terms = None if gamma is None else BoundTerms(gamma, gamma)  # the beta bound's stand-in terms, for its OT
        view, grid = sampler_view(denoiser, sampler, K, gamma=gamma, bound_terms=terms)
        fn_options = sampler_options(sampler, view)
        fn = get_sampler(sampler["fn"])
        seeds = torch.arange(batch, dtype=torch.int64) + seed
        noise = NoiseSource(seeds, shape, state_dtype, device)
        x_T = view.prior(noise, grid) if hasattr(view, "prior") else noise.latent()
        timed_noise = TimedNoise(noise, clock)
        totals, nets, noises = [], [], []
        for i in range(warmup + repeats):
            timed_net.seconds = timed_noise.seconds = 0.0
            before = denoiser.nfe
            t0 = clock.now()
            fn(view, x_T, grid, noise=timed_noise, **fn_options)
            total = clock.now() - t0
            nfe = denoiser.nfe - before
            if i >= warmup:
                totals.append(total)
                nets.append(timed_net.seconds)
                noises.append(timed_noise.seconds)
        total, net_s, noise_s = (statistics.median(v) for v in (totals, nets, noises))
        if model_name not in flops:  # one more run, on the network without the speed options
            plain_view, _ = sampler_view(plain, sampler, K, gamma=gamma, bound_terms=terms)
            flops[model_name] = count_flops(fn, plain_view, x_T, grid, noise=noise, **fn_options) // nfe
        note = f"{model['family']} family, {model['network']['type']} network; overhead over in-run network time"
        if gamma is not None:
            note += f"; Gamma_n = {GAMMA_STAND_IN} stand-in"
        row = PerfRow(
            network=f"cell:{model_name}",
            shape="x".join(map(str, shape)),
            batch=batch,
            loop="ours",
            sampler=sampler_name,
            steps=len(grid),
            nfe=nfe,
            ms_per_nfe=1e3 * total / nfe,
            overhead_pct=100.0 * (total / net_s - 1.0),
            images_per_s=batch / total,
            net_pct=100.0 * net_s / total,
            noise_pct=100.0 * noise_s / total,
            arith_pct=100.0 * (total - net_s - noise_s) / total,
            note=note,
            context={**context, "speed": speed_json, "precision": precision},
        )
        row.set_throughput(flops[model_name], peak)
        rows.append(row)
    return rows

