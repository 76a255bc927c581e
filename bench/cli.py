"""``python -m bench <step>``: each Snakemake rule calls one step; every step also runs by hand.

Steps take a JSON ``--spec`` holding exactly the settings that determine their output, so that
Snakemake reruns a job when, and only when, something it depends on changed. Each step imports
what it needs inside its function, so that a short job does not pay for torch, scikit-learn or
torchvision when it uses none of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.io import CorruptFileError, OutputWriteError, atomic_json, load_npz
from bench.stepclock import StepClock

if TYPE_CHECKING:
    import torch


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is not valid JSON: {err}") from None


def cmd_train_extractor(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.device import cpu_choice
    from bench.metrics.classifier import accuracy, save_classifier, train_classifier

    spec = _spec(args.spec)
    # The extractor trains on the CPU on purpose: its weights are defined as the CPU run's for a seed.
    clock = StepClock(cpu_choice())
    train = load_dataset(spec["dataset"], "train")
    test = load_dataset(spec["dataset"], "test")
    model = train_classifier(train, seed=spec["extractor"].get("seed", 0), epochs=spec["extractor"].get("epochs", 12))
    acc = accuracy(model, test)
    save_classifier(model, Path(args.out))
    atomic_json({"test_accuracy": acc, **clock.record()}, Path(args.out).with_suffix(".json"))


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.models import build_network, build_schedule, save_model, training_loss
    from bench.training import TrainConfig, train_eps_model

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    model_cfg = spec["model"]
    train = load_dataset(spec["dataset"], "train")
    data = torch.from_numpy(levels_to_unit(train.images, train.max_level)).to(clock.device)
    shape = tuple(data.shape[1:])
    torch.manual_seed(model_cfg["train"]["seed"])  # the initial weights are part of the seeded run
    net = build_network(model_cfg["network"], channels=shape[0], image_size=shape[1]).to(clock.device)
    schedule = build_schedule(model_cfg["schedule"])
    out = Path(args.out)
    ema, losses = train_eps_model(
        net,
        data,
        schedule,
        TrainConfig(**model_cfg["train"]),
        resume_path=out.with_name(out.name + ".resume"),
        progress=True,
        loss_fn=training_loss(model_cfg, train.max_level),
    )
    info = {"final_loss": float(np.mean(losses[-200:])), "steps": len(losses), **clock.record()}
    save_model(out, ema.cpu(), model_cfg, shape, train.max_level, info)
    out.with_name(out.name + ".resume").unlink(missing_ok=True)


def cmd_check_data(args: argparse.Namespace) -> None:
    from bench.data import check_dataset

    spec = _spec(args.spec)
    atomic_json({"kind": spec["kind"], "images": check_dataset(spec)}, Path(args.out))


def cmd_fetch_checkpoint(args: argparse.Namespace) -> None:
    from bench.checkpoints.convert import fetch_checkpoint

    fetch_checkpoint(_spec(args.spec)["checkpoint"], Path(args.out), Path(args.lock))


def cmd_convert_checkpoint(args: argparse.Namespace) -> None:
    from bench.checkpoints.convert import convert_checkpoint
    from bench.data import DATA_SHAPES

    spec = _spec(args.spec)
    shape, max_level = DATA_SHAPES[spec["dataset"]["kind"]]
    convert_checkpoint(spec["checkpoint"], Path(args.checkpoint), spec["model"], shape, max_level, Path(args.out))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from bench.models import load_model
    from bench.sampling import sample_shard

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    sampler = dict(spec["sampler"])
    if sampler.get("inputs", {}).get("gamma") == "moments":
        sampler["options"] = {**sampler.get("options", {}), "gamma": _gamma(args.moments, net)}
    net = net.to(clock.device)
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
        out_path=Path(args.out),
        context=spec["context"],
        family=ckpt["config"]["family"],
        clock=clock,
        noise=ckpt["config"].get("noise"),
    )


def _gamma(path: str | None, net: torch.nn.Module) -> torch.Tensor:
    """Gamma_n of the moments artifact, refused if it was estimated for another network."""
    from bench.analytic import load_moments, model_hash

    if path is None:
        raise SystemExit("this sampler needs --moments (the Analytic-DPM Gamma_n artifact)")
    return load_moments(Path(path), model_hash=model_hash(net)).gamma


def cmd_moments(args: argparse.Namespace) -> None:
    import torch

    from bench.analytic import estimate_gamma, model_hash, save_moments
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    digest = model_hash(net)
    net = net.to(clock.device)
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level))[: spec.get("M")].to(clock.device)
    seeds = torch.arange(len(x0), dtype=torch.int64) + spec["seed"]
    with torch.inference_mode():
        denoiser = make_denoiser(ckpt["config"]["family"], net, schedule)
        gamma = estimate_gamma(denoiser, x0, None, seeds, batch_size=spec["batch_size"])
    save_moments(
        Path(args.out), gamma, model_hash=digest, n_samples=len(x0), seed=spec["seed"], provenance=clock.record()
    )


# What a complete sample shard holds besides its seeds (bench.sampling.sample_shard).
SHARD_ARRAYS = ("images", "max_level", "nfe", "grid", "wall_seconds", "device_seconds", "device")


def _reference_stats_sha256(images: np.ndarray, max_level: int, extractor: Path, device: torch.device) -> str:
    """Content hash of the reference images' feature statistics (bench.metrics.fid_is.FeatureStats)."""
    from bench.metrics.classifier import load_classifier
    from bench.metrics.fid_is import FeatureStats, extract

    features, _ = extract(images, max_level, load_classifier(extractor).to(device))
    return FeatureStats.from_features(features).content_hash()


def cmd_fd_is(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.metrics.fid_is import compute_fd_is

    spec = _spec(args.spec)
    clock = StepClock.start()
    shards = [load_npz(Path(p), ("seeds",)) for p in args.shards]
    errors = [str(s["error"]) for s in shards if "error" in s]
    if errors:
        atomic_json({"status": "failed", "error": errors[0], **clock.record()}, Path(args.out))
        return
    for path, shard in zip(args.shards, shards, strict=True):
        missing = [k for k in SHARD_ARRAYS if k not in shard]
        if missing:
            raise SystemExit(f"sample shard {path} lacks arrays {missing}: it is not a complete shard")
    images = np.concatenate([s["images"] for s in shards])
    seeds = np.concatenate([s["seeds"] for s in shards])
    if len(images) != spec["n_samples"] or len(np.unique(seeds)) != len(seeds):
        raise SystemExit(
            f"cell {spec['context']}: shards hold {len(images)} samples ({len(np.unique(seeds))} distinct seeds), "
            f"expected exactly {spec['n_samples']}"
        )
    ref = load_dataset(spec["dataset"], spec["reference_split"])
    max_level = int(shards[0]["max_level"])
    on_gpu = clock.device.type == "cuda"
    result = compute_fd_is(images, max_level, ref.images, Path(args.extractor), cuda=on_gpu)
    reference_sha = _reference_stats_sha256(ref.images, max_level, Path(args.extractor), clock.device)
    metric = clock.record()
    sample_wall = float(sum(s["wall_seconds"] for s in shards))
    sample_device = float(sum(s["device_seconds"] for s in shards))
    atomic_json(
        {
            "fd": result["fd"],
            "is_mean": result["is_mean"],
            "is_std": result["is_std"],
            "n": result["n"],
            "backend": result["backend"],
            "backend_version": result["backend_version"],
            "mode": "levels-no-resize",  # uint8 levels mapped linearly to [-1, 1], no resize, no JPEG
            "reference_split": spec["reference_split"],
            "reference_n": len(ref.images),
            "reference_stats_sha256": reference_sha,
            "nfe": int(shards[0]["nfe"]),
            "grid": shards[0]["grid"].tolist(),
            **metric,
            # The cell's totals: its sample shards plus this step; the parts are kept beside them.
            "wall_seconds": sample_wall + metric["wall_seconds"],
            "device_seconds": sample_device + metric["device_seconds"],
            "sample_wall_seconds": sample_wall,
            "sample_device_seconds": sample_device,
            "metric_wall_seconds": metric["wall_seconds"],
            "metric_device_seconds": metric["device_seconds"],
            "devices": sorted({str(s["device"]) for s in shards} | {metric["device"]}),
        },
        Path(args.out),
    )


def cmd_nll(args: argparse.Namespace) -> None:
    import torch

    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.families import NonFiniteOutputError
    from bench.grids import time_grid
    from bench.metrics.nll import vlb_bits_per_dim
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    gamma = _gamma(args.moments, net) if "analytic" in spec["variances"] else None
    net = net.to(clock.device)
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level)).to(clock.device)
    grid = time_grid(spec["grid"], schedule.T, spec["K"])
    denoiser = make_denoiser(ckpt["config"]["family"], net, schedule, noise=ckpt["config"].get("noise"))
    seeds = (torch.arange(len(x0), dtype=torch.int64) + spec["seed"]).to(clock.device)
    variances = tuple(v for v in spec["variances"] if v not in ("analytic", "learned"))
    try:
        with torch.inference_mode():
            bpd = vlb_bits_per_dim(
                denoiser, x0, grid, seeds, max_level=split.max_level, clip_x0=spec["clip_x0"], variances=variances
            )
            nfe = denoiser.nfe  # network evaluations per image of one bound; the analytic bound repeats them
            if "learned" in spec["variances"]:
                from bench.iddpm import learned_vlb_bits_per_dim

                bpd["learned"] = learned_vlb_bits_per_dim(
                    denoiser, x0, grid, seeds, max_level=split.max_level, clip_x0=spec["clip_x0"]
                )
            if "analytic" in spec["variances"]:
                from bench.analytic import vlb_bits_per_dim_analytic

                bpd["analytic"] = vlb_bits_per_dim_analytic(
                    denoiser,
                    x0,
                    grid,
                    seeds,
                    gamma=gamma,
                    max_level=split.max_level,
                    clip_x0=spec["clip_x0"],
                )
    except NonFiniteOutputError as err:
        message = f"NLL of model {args.model} with K={spec['K']}: {err} (batch index = test image index)"
        print(f"error: {message}", file=sys.stderr)
        atomic_json({"status": "failed", "error": message, **clock.record()}, Path(args.out))
        return
    atomic_json(
        {
            "status": "ok",
            "bpd": {v: float(b.mean()) for v, b in bpd.items()},
            "bpd_sem": {v: float(b.std() / len(b) ** 0.5) for v, b in bpd.items()},
            "n": len(x0),
            "split": spec["split"],
            "nfe": nfe,
            "grid": grid.tolist(),
            "clip_x0": spec["clip_x0"],
            **clock.record(),
        },
        Path(args.out),
    )


def cmd_ode_nll(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.metrics.ode_nll import ode_nll
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
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
            f"PF-ODE NLL of model {args.model}: not finite for {spec['split']} image {bad} (seed {int(seeds[bad])})"
        )
        print(f"error: {message}", file=sys.stderr)
        atomic_json({"status": "failed", "error": message, **record}, Path(args.out))
        return
    atomic_json(
        {"status": "ok", "bpd": float(bpd.mean()), "bpd_sem": float(bpd.std() / len(bpd) ** 0.5), **record},
        Path(args.out),
    )


def cmd_collect(args: argparse.Namespace) -> None:
    from bench.collect import collect_metrics

    collect_metrics(_spec(args.spec), Path(args.results), Path(args.out))


def cmd_report(args: argparse.Namespace) -> None:
    from bench.report.render import render_report

    render_report(Path(args.results), [Path(p) for p in args.tables], Path(args.out))


def cmd_plan(args: argparse.Namespace) -> None:
    from bench.config import load_config
    from bench.plan import format_plan, plan

    print(format_plan(plan(load_config(Path(args.config), check_paths=False))), end="")


def cmd_validate(args: argparse.Namespace) -> None:
    from bench.config import cells, load_config

    cfg = load_config(Path(args.config))
    print(f"{args.config}: valid; {len(cells(cfg))} cells")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)

    def step(name: str, fn, *, spec: bool = True, out: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.set_defaults(fn=fn)
        if spec:
            sp.add_argument("--spec", required=True, help="JSON settings of this step")
        if out:
            sp.add_argument("--out", required=True)
        return sp

    sub.add_parser("perf", help="time the network, our samplers and a peer loop (python -m bench perf --help)")
    step("train-extractor", cmd_train_extractor)
    step("train", cmd_train).add_argument("--threads", type=int, default=1)
    step("check-data", cmd_check_data)
    step("fetch-checkpoint", cmd_fetch_checkpoint).add_argument("--lock", required=True, help="sha256 pin file")
    step("convert-checkpoint", cmd_convert_checkpoint).add_argument("--checkpoint", required=True)
    for name, fn in (("sample", cmd_sample), ("nll", cmd_nll), ("moments", cmd_moments)):
        sp = step(name, fn)
        sp.add_argument("--model", required=True)
        sp.add_argument("--threads", type=int, default=1)
        if fn is not cmd_moments:
            sp.add_argument("--moments", help="Analytic-DPM moments artifact, for samplers that need Gamma_n")
    sp = step("ode-nll", cmd_ode_nll)
    sp.add_argument("--model", required=True)
    sp.add_argument("--threads", type=int, default=1)
    sp = step("fd-is", cmd_fd_is)
    sp.add_argument("--extractor", required=True)
    sp.add_argument("--shards", nargs="+", required=True)
    sp = step("collect", cmd_collect)
    sp.add_argument("--results", required=True)
    sp = step("report", cmd_report, spec=False)
    sp.add_argument("--results", required=True)
    sp.add_argument("--tables", nargs="+", required=True)
    sp = step("plan", cmd_plan, spec=False, out=False)
    sp.add_argument("--config", "--configfile", dest="config", required=True)
    sp = step("validate", cmd_validate, spec=False, out=False)
    sp.add_argument("--config", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["perf"]:
        # perf has its own parser (its options start with --, which a REMAINDER subparser refuses).
        from bench.perf import main as perf_main

        return perf_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (CorruptFileError, OutputWriteError) as err:
        # A bad input file or a failed write is the user's to fix: name it, without torch's or numpy's traceback.
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
