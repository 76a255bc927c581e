"""The ode-nll step: the probability-flow ODE likelihood in bits/dim of a continuous-time model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.checkpoints.model_file import load_model
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import make_denoiser
from bench.metrics.nll import standard_error
from bench.metrics.ode_nll import ode_nll
from bench.runtime.io import atomic_json
from bench.runtime.stepclock import StepClock


def run(spec: dict, out: Path, model: Path, threads: int) -> None:
    """Bits/dim of ``model`` on spec["n_images"] images of spec["split"]; a non-finite value fails the record."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(model)
    net = net.to(clock.device)
    score = make_denoiser(ckpt["config"]["family"], net, schedule, tuple(ckpt["data_shape"])).as_score()
    split = load_dataset(spec["dataset"], spec["split"])
    x = torch.from_numpy(levels_to_unit(split.images, split.max_level)).to(torch.float64)[: spec.get("n_images")]
    x = x.to(clock.device)
    seeds = (torch.arange(len(x), dtype=torch.int64) + spec["seed"]).to(clock.device)
    batch = spec.get("batch_size") or len(x)
    options = {k: spec[k] for k in ("rtol", "atol", "method", "estimator", "dequantization") if k in spec}
    parts = [
        ode_nll(score, x[i : i + batch], seeds[i : i + batch], max_level=split.max_level, **options)
        for i in range(0, len(x), batch)
    ]
    bpd = torch.cat([p["bpd"] for p in parts])
    # every image of a batch shares that batch's solve, so its NFE is the batch's
    nfe = sum(p["nfe"] * len(p["bpd"]) for p in parts) / len(x)
    record = {k: parts[0][k] for k in ("estimator", "dequantization", "offset_bits", "rtol", "atol", "method")}
    record |= {
        "n_images": len(x),
        "split": spec["split"],
        "max_level": split.max_level,
        "sigma_min": parts[0]["sigma_min"],
        "sigma_max": parts[0]["sigma_max"],
        "nfe": round(nfe),
        "nfe_per_batch": [p["nfe"] for p in parts],
        "batch_size": batch,
    }
    record |= clock.record()
    if not bool(torch.isfinite(bpd).all()):
        bad = int(torch.nonzero(~torch.isfinite(bpd))[0])
        message = (
            f"PF-ODE NLL of model {model}: not finite for {spec['split']} image {bad} (seed {int(seeds[bad])})"
        )
        print(f"error: {message}", file=sys.stderr)
        atomic_json({"status": "failed", "error": message, **record}, out)
        return
    atomic_json(
        {"status": "ok", "bpd": float(bpd.mean()), "bpd_sem": standard_error(bpd), **record},
        out,
    )
