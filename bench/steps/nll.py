"""The nll step: the variational bound in bits/dim of one trajectory, for each of its reverse variances."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.checkpoints.model_file import load_model
from bench.core.denoiser import NonFiniteOutputError
from bench.core.time_grids import MOMENT_GRIDS, time_grid
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import make_denoiser
from bench.methods.analytic import vlb_bits_per_dim_analytic
from bench.methods.iddpm import learned_vlb_bits_per_dim
from bench.metrics.nll import standard_error, vlb_bits_per_dim
from bench.runtime.io import atomic_json
from bench.runtime.stepclock import StepClock
from bench.steps.moments import moments_of


def run(spec: dict, out: Path, model: Path, threads: int, moments: Path | None) -> None:
    """Bits/dim of ``model`` on spec["split"] for each of spec["variances"] on the grid spec["grid"] with K steps
    (``moments``: the model's Gamma_n, for the analytic bound and the optimal trajectories)."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(model)
    gamma = bound_terms = None
    if "analytic" in spec["variances"] or spec["grid"] in MOMENT_GRIDS:
        found = moments_of(moments, net, spec.get("moments_M"), f"NLL of model {model} on grid {spec['grid']}")
        gamma, bound_terms = found.gamma, found.bound_terms
    net = net.to(clock.device)
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level)).to(clock.device)

    def grid_of(variance: str) -> torch.Tensor:
        """The grid of one bound: on a moment grid, the optimal trajectory of its own variance."""
        trajectory = {"variance": variance, "bound_terms": bound_terms} if spec["grid"] in MOMENT_GRIDS else {}
        return time_grid(
            spec["grid"], schedule.T, spec["K"], alpha_bars=schedule.alpha_bars, gamma=gamma,
            **trajectory, **spec.get("grid_options", {}),
        )

    grids = {v: grid_of(v) for v in spec["variances"] if v != "learned"} if spec["grid"] in MOMENT_GRIDS else {}
    grid = grid_of("analytic") if spec["grid"] not in MOMENT_GRIDS else next(iter(grids.values()))
    denoiser = make_denoiser(ckpt["config"]["family"], net, schedule, noise=ckpt["config"].get("noise"))
    seeds = (torch.arange(len(x0), dtype=torch.int64) + spec["seed"]).to(clock.device)
    variances = tuple(v for v in spec["variances"] if v not in ("analytic", "learned"))
    # The fixed-variance bounds share draws and network calls where they share a grid.
    by_grid: dict[tuple[int, ...], list[str]] = {}
    for v in variances:
        by_grid.setdefault(tuple(grids.get(v, grid).tolist()), []).append(v)
    try:
        with torch.inference_mode():
            bpd = {}
            for steps, group in (by_grid or {tuple(grid.tolist()): []}).items():
                bpd |= vlb_bits_per_dim(
                    denoiser,
                    x0,
                    torch.tensor(steps, dtype=torch.int64),
                    seeds,
                    max_level=split.max_level,
                    clip_x0=spec["clip_x0"],
                    variances=tuple(group),
                    decoder=spec.get("decoder", "trajectory"),
                )
            # network evaluations per image of one bound; each further grid and the analytic bound repeat them
            nfe = denoiser.nfe // max(len(by_grid), 1)
            if "learned" in spec["variances"]:
                bpd["learned"] = learned_vlb_bits_per_dim(
                    denoiser, x0, grid, seeds, max_level=split.max_level, clip_x0=spec["clip_x0"]
                )
            if "analytic" in spec["variances"]:
                bpd["analytic"] = vlb_bits_per_dim_analytic(
                    denoiser,
                    x0,
                    grids.get("analytic", grid),
                    seeds,
                    gamma=gamma,
                    max_level=split.max_level,
                    clip_x0=spec["clip_x0"],
                )
    except NonFiniteOutputError as err:
        message = f"NLL of model {model} with K={spec['K']}: {err} (batch index = test image index)"
        print(f"error: {message}", file=sys.stderr)
        atomic_json({"status": "failed", "error": message, **clock.record()}, out)
        return
    atomic_json(
        {
            "status": "ok",
            "bpd": {v: float(b.mean()) for v, b in bpd.items()},
            "bpd_sem": {v: standard_error(b) for v, b in bpd.items()},
            "n": len(x0),
            "split": spec["split"],
            "nfe": nfe,
            "grid": grid.tolist(),
            # On a moment grid, each bound's own optimal trajectory.
            **({"grids": {v: g.tolist() for v, g in grids.items()}} if grids else {}),
            "clip_x0": spec["clip_x0"],
            # The Monte-Carlo size of the Gamma_n the analytic bound and the optimal trajectories read.
            **({"moments_M": found.n_samples} if gamma is not None else {}),
            # The decoder variance of each fixed or analytic bound (bench.metrics.nll.DECODER_VARIANCES).
            "decoder": {
                v: "chain" if v == "analytic" else spec.get("decoder", "trajectory") for v in bpd if v != "learned"
            },
            **clock.record(),
        },
        out,
    )
