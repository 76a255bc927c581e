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

    from bench.config import DEFAULT_STATE_DTYPE
    from bench.grids import MOMENT_GRIDS
    from bench.models import load_model
    from bench.sampling import sample_shard
    from bench.speed import SpeedOptions, apply_speed_options

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    sampler = dict(spec["sampler"])
    gamma = None
    if sampler.get("inputs", {}).get("gamma") == "moments" or sampler["grid"] in MOMENT_GRIDS:
        gamma = _gamma(args.moments, net)
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
        out_path=Path(args.out),
        context=spec["context"],
        family=ckpt["config"]["family"],
        clock=clock,
        noise=ckpt["config"].get("noise"),
        gamma=gamma,
        speed=speed,
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
SHARD_ARRAYS = ("images", "max_level", "nfe", "grid", "wall_seconds", "device_seconds", "device", "speed")


def cmd_features(args: argparse.Namespace) -> None:
    from bench.metrics.extractors import extract_outputs, signature
    from bench.metrics.shard_features import ShardFeatures, exact_stats, save_failed_shard

    spec = _spec(args.spec)
    shard = load_npz(Path(args.shard), ("seeds",))
    if "error" in shard:
        save_failed_shard(Path(args.out), str(shard["error"]))
        return
    missing = [k for k in SHARD_ARRAYS if k not in shard]
    if missing:
        raise SystemExit(f"sample shard {args.shard} lacks arrays {missing}: it is not a complete shard")
    clock = _extractor_clock(spec["extractor"], args.threads)
    features, is_kind, is_values = extract_outputs(
        spec["extractor"], Path(args.extractor), shard["images"], int(shard["max_level"])
    )
    timing = clock.record()
    ShardFeatures(
        stats=exact_stats(features),
        is_kind=is_kind,
        is_values=is_values,
        seeds=shard["seeds"],
        extractor=signature(spec["extractor"]),
        nfe=int(shard["nfe"]),
        grid=shard["grid"],
        sample_wall_seconds=float(shard["wall_seconds"]),
        feature_wall_seconds=timing["wall_seconds"],
        sample_device_seconds=float(shard["device_seconds"]),
        feature_device_seconds=timing["device_seconds"],
        devices=tuple(sorted({str(shard["device"]), timing["device"]})),
        speeds=(str(shard["speed"]),),
    ).save(Path(args.out))


def _extractor_clock(extractor: dict, threads: int) -> StepClock:
    """The clock of a step that runs ``extractor``: on the host for numpy's digits CNN, else on a chosen device."""
    from bench.metrics.extractors import runs_on_host

    if runs_on_host(extractor):
        return StepClock.on_host()
    import torch

    torch.set_num_threads(threads)
    return StepClock.start()


def cmd_reference_stats(args: argparse.Namespace) -> None:
    from bench.metrics.extractors import backend_and_mode, signature

    spec = _spec(args.spec)
    backend, mode = backend_and_mode(spec["extractor"])
    clock = _extractor_clock(spec["extractor"], args.threads)
    if "reference" in spec:
        from bench.checkpoints.references import statistics_entry
        from bench.metrics.reference_stats import fetch_statistics

        entry = statistics_entry(spec["reference"])
        if entry.mode != mode:
            raise SystemExit(
                f"reference statistics {entry.name!r} were made in mode {entry.mode!r}; "
                f"the extractor runs in mode {mode!r}"
            )
        stats, digest = fetch_statistics(entry, Path(args.cache), Path(args.lock))
        meta = {"reference": entry.name, "url": entry.url, "source": entry.source}
    else:
        from bench.data import load_dataset
        from bench.metrics.extractors import extract_outputs
        from bench.metrics.feature_stats import FeatureStats
        from bench.metrics.shard_features import fixed_point

        split = load_dataset(spec["dataset"], spec["split"])
        features, _, _ = extract_outputs(spec["extractor"], Path(args.extractor), split.images, split.max_level)
        stats = FeatureStats.from_features(fixed_point(features))
        digest = stats.content_hash()
        meta = {"reference": spec["split"]}
    stats.save(Path(args.out))
    meta |= {
        "n_images": stats.n,
        "reference_stats_sha256": digest,
        "extractor": signature(spec["extractor"]),
        "backend": backend,
        "mode": mode,
        **clock.record(),
    }
    atomic_json(meta, Path(args.out).with_suffix(".json"))


def cmd_fetch_weights(args: argparse.Namespace) -> None:
    from bench.checkpoints.references import fetch_weights, weights_entry

    entry = weights_entry(_spec(args.spec)["weights"])
    fetched = fetch_weights(entry, Path(args.cache), Path(args.lock))
    if fetched.resolve() != Path(args.out).resolve():
        raise SystemExit(f"weights {entry.name!r} were fetched to {fetched}, not to --out {args.out}")


def cmd_fd_is(args: argparse.Namespace) -> None:
    from bench.io import load_json
    from bench.metrics.extractors import backend_and_mode, signature
    from bench.metrics.feature_stats import (
        FeatureStats,
        frechet_distance_of_backend,
        inception_score,
        inception_score_from_probs,
    )
    from bench.metrics.shard_features import ShardFailed, ShardFeatures, merge_shards

    spec = _spec(args.spec)
    try:
        shards = [ShardFeatures.load(Path(p)) for p in args.features]
    except ShardFailed as err:
        atomic_json({"status": "failed", "error": str(err)}, Path(args.out))
        return
    cell = merge_shards(shards)
    if cell.stats.n != spec["n_samples"] or len(np.unique(cell.seeds)) != len(cell.seeds):
        raise SystemExit(
            f"cell {spec['context']}: shards hold {cell.stats.n} samples "
            f"({len(np.unique(cell.seeds))} distinct seeds), expected exactly {spec['n_samples']}"
        )
    if cell.extractor != signature(spec["extractor"]):
        raise SystemExit(
            f"cell {spec['context']}: features from {cell.extractor!r}, expected {signature(spec['extractor'])!r}"
        )
    reference = FeatureStats.load(Path(args.reference))
    ref_meta = load_json(Path(args.reference).with_suffix(".json"))
    if ref_meta["extractor"] != cell.extractor:
        raise SystemExit(
            f"reference statistics {args.reference} come from {ref_meta['extractor']!r}, not {cell.extractor!r}"
        )
    backend, mode = backend_and_mode(spec["extractor"])
    clock = StepClock.on_host()
    fd = frechet_distance_of_backend(backend, cell.stats, reference)
    splits = spec.get("is_splits", 10)
    if cell.is_kind == "logits":
        is_mean, is_std = inception_score(cell.is_values, splits=splits)
    else:
        is_mean, is_std = inception_score_from_probs(cell.is_values, splits=splits)
    metric = clock.record()
    metric_wall = cell.feature_wall_seconds + metric["wall_seconds"]
    metric_device = cell.feature_device_seconds + metric["device_seconds"]
    atomic_json(
        {
            "status": "ok",
            "fd": fd,
            "is_mean": is_mean,
            "is_std": is_std,
            "is_splits": splits,
            "n": cell.stats.n,
            "n_images": cell.stats.n,
            "backend": backend,
            "backend_version": _version(backend),
            "mode": mode,
            "extractor": cell.extractor,
            "reference": ref_meta["reference"],
            "reference_n": ref_meta["n_images"],
            "reference_stats_sha256": ref_meta["reference_stats_sha256"],
            "nfe": cell.nfe,
            "grid": cell.grid.tolist(),
            **metric,
            # The cell's totals: sampling, feature extraction and this step; the parts are kept beside them.
            "wall_seconds": cell.sample_wall_seconds + metric_wall,
            "device_seconds": cell.sample_device_seconds + metric_device,
            "sample_wall_seconds": cell.sample_wall_seconds,
            "sample_device_seconds": cell.sample_device_seconds,
            "feature_wall_seconds": cell.feature_wall_seconds,
            "metric_wall_seconds": metric_wall,
            "metric_device_seconds": metric_device,
            "devices": sorted(set(cell.devices) | {metric["device"]}),
            # The speed options each shard's sampling job applied to the network (bench.speed records).
            "speed": [json.loads(s) for s in cell.speeds],
        },
        Path(args.out),
    )


def _version(backend: str) -> str:
    from importlib import metadata

    return metadata.version(backend)  # each FD backend is named after its distribution


def cmd_nll(args: argparse.Namespace) -> None:
    import torch

    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.families import NonFiniteOutputError
    from bench.grids import MOMENT_GRIDS, time_grid
    from bench.metrics.nll import standard_error, vlb_bits_per_dim
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    gamma = None
    if "analytic" in spec["variances"] or spec["grid"] in MOMENT_GRIDS:
        gamma = _gamma(args.moments, net)
    net = net.to(clock.device)
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level)).to(clock.device)
    grid = time_grid(
        spec["grid"], schedule.T, spec["K"], alpha_bars=schedule.alpha_bars, gamma=gamma, **spec.get("grid_options", {})
    )
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
            "bpd_sem": {v: standard_error(b) for v, b in bpd.items()},
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
    import torch

    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.metrics.nll import standard_error
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
        {"status": "ok", "bpd": float(bpd.mean()), "bpd_sem": standard_error(bpd), **record},
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
    sp = step("features", cmd_features)
    sp.add_argument("--extractor", required=True, help="extractor weights (digits classifier or Inception file)")
    sp.add_argument("--shard", required=True)
    sp.add_argument("--threads", type=int, default=1)
    sp = step("reference-stats", cmd_reference_stats)
    sp.add_argument("--extractor", help="extractor weights, to compute statistics of a dataset split")
    sp.add_argument("--cache", default="resources/references", help="download folder of published statistics")
    sp.add_argument("--lock", default="resources/references.lock.json", help="sha256 pins of unhashed downloads")
    sp.add_argument("--threads", type=int, default=1)
    sp = step("fetch-weights", cmd_fetch_weights)
    sp.add_argument("--cache", default="resources/inception", help="download folder of Inception weights")
    sp.add_argument("--lock", default="resources/references.lock.json", help="sha256 pins of unhashed downloads")
    sp = step("fd-is", cmd_fd_is)
    sp.add_argument("--features", nargs="+", required=True, help="the cell's per-shard features files, in seed order")
    sp.add_argument("--reference", required=True, help="reference statistics written by reference-stats")
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
