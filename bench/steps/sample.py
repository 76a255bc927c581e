"""One sampling job: a shard of a cell's samples, written atomically with what made it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.checkpoints.model_file import load_model
from bench.config import DEFAULT_STATE_DTYPE
from bench.core.denoiser import DiscreteEpsDenoiser, NonFiniteOutputError
from bench.core.labels import check_label_dim, draw_labels, network_label_dim
from bench.core.noise import NoiseSource
from bench.core.sigma_grids import sigma_range
from bench.core.spaces import SPACES, view_for
from bench.data.digits import unit_to_levels
from bench.families import make_denoiser
from bench.runtime.device import cpu_choice
from bench.runtime.speed import SpeedOptions, apply_speed_options
from bench.runtime.stepclock import StepClock
from bench.samplers import coupled_block, get_sampler, get_spec, needs_moments, trajectory_variance
from bench.steps.moments import moments_of
from bench.steps.shard_format import SampleShard, save_failed_shard

if TYPE_CHECKING:
    from bench.methods.analytic import BoundTerms


class NonFiniteSampleError(RuntimeError):
    """A sampler produced NaN or Inf: no metric may be computed from such a cell."""


def sampler_view(
    denoiser, sampler: dict, K: int, *, gamma: torch.Tensor | None = None, bound_terms: BoundTerms | None = None
) -> tuple[object, torch.Tensor]:
    """(what the sampler calls, its grid) for K steps of ``sampler`` on a family's denoiser, in its spec's space
    (bench.core.spaces). ``gamma`` and ``bound_terms`` are the model's moments, for grids that need them:
    the optimal trajectory of the sampler's variance (bench.samplers.trajectory_variance).
    """
    return view_for(
        get_spec(sampler["fn"]).space, denoiser, sampler["grid"], K, sampler.get("grid_options", {}),
        gamma=gamma, bound_terms=bound_terms, variance=lambda: trajectory_variance(sampler),
    )


def sampler_options(sampler: dict, view) -> dict:
    """The keyword options of ``sampler`` on ``view`` (what sampler_view returned): the config's, plus for a
    sampler that takes the grid's range (SamplerSpec.takes_grid_range) the grid's sigma range on that
    network and its epsilon_s (generate.py L87-100)."""
    options = dict(sampler.get("options", {}))
    if get_spec(sampler["fn"]).takes_grid_range:
        grid_options = sampler.get("grid_options", {})
        sigma_min, sigma_max = sigma_range(sampler["grid"], denoiser=view, **grid_options)
        options.update(sigma_min=sigma_min, sigma_max=sigma_max, epsilon_s=grid_options.get("epsilon_s", 1e-3))
    return options


def sampler_batches(first_index: int, n: int, batch_size: int, block: int = 1) -> list[tuple[int, int]]:
    """[start, stop) offsets into a shard's n seeds, cell indices first_index.., of each sampler call.

    A sampler that couples ``block`` consecutive samples (bench.samplers.coupled_block) gets whole
    blocks of cell indices [b block, (b + 1) block): as many as fit in ``batch_size``, at least one
    (its network calls then take at most ``batch_size`` rows each, see ChunkedCalls). The shard must
    start on a block boundary; the cell's last block may be shorter.
    """
    if first_index % block:
        raise ValueError(
            f"a shard starting at sample index {first_index} splits a block of {block} samples that the sampler "
            f"couples; shards must start at multiples of {block}"
        )
    size = max(1, batch_size // block) * block
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def network_calls_per_step(bounds: list[tuple[int, int]], batch_size: int) -> int:
    """How many network calls one sampler step over all of ``bounds`` makes, at most ``batch_size`` rows each."""
    return sum(-(-(b - a) // batch_size) for a, b in bounds)


class ChunkedCalls:
    """A sampler's view whose calls evaluate at most ``size`` rows at a time (a block may exceed the batch).

    ``labelled``: the class-conditional family denoiser behind the view, whose ``class_labels`` (one per row of
    the whole batch) each chunk's call narrows to its own rows.
    """

    def __init__(self, view, size: int, labelled=None):
        self.view = view
        self.size = size
        self.labelled = labelled

    def __getattr__(self, name: str):
        return getattr(self.view, name)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if len(x) <= self.size:
            return self.view(x, *args, **kwargs)
        labels = None if self.labelled is None else self.labelled.class_labels
        parts = []
        try:
            for a in range(0, len(x), self.size):
                if labels is not None:
                    self.labelled.class_labels = labels[a : a + self.size]
                try:
                    parts.append(self.view(x[a : a + self.size], *args, **kwargs))
                except NonFiniteOutputError as err:
                    raise NonFiniteOutputError(err.step, a + err.index) from None
        finally:
            if labels is not None:
                self.labelled.class_labels = labels
        return torch.cat(parts)


def label_dim_of(denoiser) -> int:
    """How many classes a family denoiser's network is conditioned on (0: unconditional)."""
    return int(getattr(denoiser, "label_dim", 0))


def generate(
    denoiser: DiscreteEpsDenoiser,
    sampler: dict,
    K: int,
    seeds: torch.Tensor,
    shape: tuple[int, ...],
    *,
    batch_size: int,
    context: str = "",
    first_index: int = 0,
    device: torch.device | str = "cpu",
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    state_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ([N, *shape] in ``state_dtype``, on ``device``, the network's) for ``seeds``; returns (samples, grid).

    The realised grid of a level sampler is its levels in the order visited (descending sigmas).

    ``first_index`` is the cell-wide index of ``seeds[0]``, so errors name the sample in the cell;
    ``gamma`` and ``bound_terms`` are the model's moments, for grids chosen from them (time_grids.MOMENT_GRIDS).
    Sampler calls cover the seeds as ``sampler_batches`` cuts them; no network call takes more than
    ``batch_size`` rows. A class-conditional denoiser (``label_dim`` > 0) samples each seed with its own label
    (bench.core.labels.draw_labels), whatever the batch.
    """
    fn = get_sampler(sampler["fn"])
    view, grid = sampler_view(denoiser, sampler, K, gamma=gamma, bound_terms=bound_terms)
    options = sampler_options(sampler, view)
    block = coupled_block(sampler)
    label_dim = label_dim_of(denoiser)
    model = ChunkedCalls(view, batch_size, denoiser if label_dim else None) if block > 1 else view
    out = []
    for start, stop in sampler_batches(first_index, len(seeds), batch_size, block):
        batch = seeds[start:stop]
        noise = NoiseSource(batch, shape, state_dtype, device)
        if label_dim:
            denoiser.class_labels = draw_labels(batch, label_dim)
        x_T = model.prior(noise, grid) if hasattr(model, "prior") else noise.latent()
        try:
            x = fn(model, x_T, grid, noise=noise, **options)
        except NonFiniteOutputError as err:
            raise NonFiniteSampleError(
                f"{context}: network output is not finite at step {err.step} (timestep index) for sample index "
                f"{first_index + start + err.index} (seed {int(batch[err.index])})"
            ) from None
        bad = ~torch.isfinite(x.reshape(len(batch), -1)).all(dim=1)
        if bad.any():
            idx = int(torch.nonzero(bad)[0])
            raise NonFiniteSampleError(
                f"{context}: final sample is not finite for sample index {first_index + start + idx} "
                f"(seed {int(batch[idx])})"
            )
        out.append(x)
    realised = SPACES[get_spec(sampler["fn"]).space].realised(model, grid)
    return torch.cat(out), realised


def sample_shard(
    net: torch.nn.Module,
    schedule,
    sampler: dict,
    K: int,
    start: int,
    stop: int,
    *,
    base_seed: int,
    shape: tuple[int, ...],
    max_level: int,
    batch_size: int,
    state_dtype: torch.dtype = torch.float32,
    out_path: Path,
    context: str,
    family: str = "ddpm",
    clock: StepClock | None = None,
    noise: dict | None = None,
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    speed: dict[str, Any] | None = None,
) -> Path:
    """Sample indices [start, stop) with seeds base_seed + i, quantise to integer levels, save .npz.

    Sampling runs on the network's device. ``clock`` (default: one started now on the CPU) gives the
    shard's device, wall_seconds and device_seconds. A cell whose samples are not finite gets a
    failure record instead (``error`` holds the message, no images), so no metric is ever computed
    from it while the rest of the DAG goes on. ``gamma``, ``bound_terms``, ``state_dtype``: as in generate.
    ``speed``: the record of the speed options applied to ``net`` (bench.runtime.speed.apply_speed_options), kept
    as JSON in the shard (``null``: none recorded).
    """
    clock = clock or StepClock(cpu_choice())
    denoiser = make_denoiser(family, net, schedule, shape, noise=noise)
    seeds = torch.arange(start, stop, dtype=torch.int64) + base_seed
    # The job log shows when sampling (the long part of a job) starts, after the model has loaded.
    print(f"{context}: sampling indices [{start}, {stop}) in batches of {batch_size}", file=sys.stderr, flush=True)
    try:
        with torch.inference_mode():
            x, grid = generate(
                denoiser, sampler, K, seeds, shape, batch_size=batch_size, context=context, first_index=start,
                device=next(net.parameters()).device, gamma=gamma, bound_terms=bound_terms,
                state_dtype=state_dtype,
            )
    except NonFiniteSampleError as err:
        print(f"error: {err}", file=sys.stderr)
        return save_failed_shard(out_path, str(err), seeds.numpy())
    images = unit_to_levels(x.cpu().numpy(), max_level)
    label_dim = label_dim_of(denoiser)
    bounds = sampler_batches(start, len(seeds), batch_size, coupled_block(sampler))
    n_batches = network_calls_per_step(bounds, batch_size)
    timing = clock.record()
    return SampleShard(
        images=images,
        seeds=seeds.numpy(),
        max_level=max_level,
        grid=grid.cpu().numpy(),
        nfe=denoiser.nfe // n_batches,
        wall_seconds=timing["wall_seconds"],
        device_seconds=timing["device_seconds"],
        device_clock=timing["device_clock"],
        device=timing["device"],
        device_detail=timing["device_detail"],
        speed=json.dumps(speed, sort_keys=True),
        labels=draw_labels(seeds, label_dim).numpy() if label_dim else None,
    ).save(out_path)


def run(spec: dict, out: Path, model: Path, threads: int, moments: Path | None) -> None:
    """Draw the shard [spec["start"], spec["stop"]) of a cell's samples from ``model`` (``moments``: its Gamma_n)."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(model)
    check_label_dim(ckpt["config"].get("label_dim", 0), network_label_dim(net), spec["context"])
    sampler = dict(spec["sampler"])
    gamma = bound_terms = None
    if needs_moments(sampler):
        found = moments_of(moments, net, sampler.get("moments_M"), spec["context"])
        gamma, bound_terms = found.gamma, found.bound_terms
    if sampler.get("inputs", {}).get("gamma") == "moments":
        sampler["options"] = {**sampler.get("options", {}), "gamma": gamma}
    net, speed = apply_speed_options(net.to(clock.device), SpeedOptions(**spec.get("speed", {})))
    sample_shard(
        net,
        schedule,
        sampler,
        spec["K"],
        spec["start"],
        spec["stop"],
        base_seed=spec["seed"],
        shape=tuple(ckpt["data_shape"]),
        max_level=ckpt["max_level"],
        batch_size=spec["batch_size"],
        state_dtype=getattr(torch, spec.get("state_dtype", DEFAULT_STATE_DTYPE)),
        out_path=out,
        context=spec["context"],
        family=ckpt["config"]["family"],
        clock=clock,
        noise=ckpt["config"].get("noise"),
        gamma=gamma,
        bound_terms=bound_terms,
        speed=speed,
    )
