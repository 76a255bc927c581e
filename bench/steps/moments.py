"""The moments step: Analytic-DPM's Monte-Carlo Gamma_n of a model, estimated once and shared by every K and sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.checkpoints.model_file import load_model
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import make_denoiser
from bench.methods.analytic import BoundTerms, Moments, load_moments, model_hash, save_moments, step_statistics
from bench.runtime.stepclock import StepClock


def run(spec: dict, out: Path, model: Path, threads: int) -> None:
    """Estimate Gamma_n (and the beta bound's terms) of ``model`` from ``spec["M"]`` images of a dataset split."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(model)
    digest = model_hash(net)
    net = net.to(clock.device)
    split = load_dataset(spec["dataset"], spec["split"])
    if spec.get("M", 0) > len(split.images):
        raise SystemExit(f"moments: M = {spec['M']} exceeds the {len(split.images)} images of split {spec['split']!r}")
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level))[: spec.get("M")].to(clock.device)
    seeds = torch.arange(len(x0), dtype=torch.int64) + spec["seed"]
    with torch.inference_mode():
        denoiser = make_denoiser(ckpt["config"]["family"], net, schedule)
        stats = step_statistics(
            denoiser, x0, None, seeds, batch_size=spec["batch_size"], max_level=split.max_level
        )
    save_moments(
        out,
        stats["gamma"],
        model_hash=digest,
        n_samples=len(x0),
        seed=spec["seed"],
        bound_terms=BoundTerms(stats["recon"], stats["decoder_nll"]),
        provenance=clock.record(),
    )


def moments_of(path: Path | None, net: torch.nn.Module, M: int | None = None, context: str = "this job") -> Moments:
    """The moments artifact a sample or nll job reads, refused if it was estimated for another network or, where
    the job names its Monte-Carlo size ``M`` (a sampler's moments_M), from another number of images."""
    if path is None:
        raise SystemExit("this sampler needs --moments (the Analytic-DPM Gamma_n artifact)")
    found = load_moments(path, model_hash=model_hash(net))
    if M is not None and found.n_samples != M:
        raise SystemExit(f"{context}: the sampler's moments_M is {M}, but {path} was estimated from M = "
                         f"{found.n_samples} images")
    return found
