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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.runtime.io import CorruptFileError, OutputWriteError, atomic_json, load_npz
from bench.runtime.stepclock import StepClock

if TYPE_CHECKING:
    import torch


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is not valid JSON: {err}") from None


def cmd_train_extractor(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.metrics.classifier import accuracy, save_classifier, train_classifier
    from bench.runtime.device import cpu_choice

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
    from bench.steps.train import TrainConfig, train_eps_model

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
    from bench.core.time_grids import MOMENT_GRIDS
    from bench.models import load_model
    from bench.runtime.speed import SpeedOptions, apply_speed_options
    from bench.steps.sample import sample_shard

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    sampler = dict(spec["sampler"])
    gamma = bound_terms = None
    if sampler.get("inputs", {}).get("gamma") == "moments" or sampler["grid"] in MOMENT_GRIDS:
        moments = _moments(args.moments, net)
        gamma, bound_terms = moments.gamma, moments.bound_terms
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
        bound_terms=bound_terms,
        speed=speed,
    )


def _moments(path: str | None, net: torch.nn.Module):
    """The moments artifact (bench.methods.analytic.Moments), refused if it was estimated for another network."""
    from bench.methods.analytic import load_moments, model_hash

    if path is None:
        raise SystemExit("this sampler needs --moments (the Analytic-DPM Gamma_n artifact)")
    return load_moments(Path(path), model_hash=model_hash(net))


def cmd_moments(args: argparse.Namespace) -> None:
    import torch

    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.methods.analytic import BoundTerms, model_hash, save_moments, step_statistics
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
        stats = step_statistics(
            denoiser, x0, None, seeds, batch_size=spec["batch_size"], max_level=split.max_level
        )
    save_moments(
        Path(args.out),
        stats["gamma"],
        model_hash=digest,
        n_samples=len(x0),
        seed=spec["seed"],
        bound_terms=BoundTerms(stats["recon"], stats["decoder_nll"]),
        provenance=clock.record(),
    )


# What a complete sample shard holds besides its seeds (bench.steps.sample.sample_shard).
SHARD_ARRAYS = ("images", "max_level", "nfe", "grid", "wall_seconds", "device_seconds", "device", "speed")


def cmd_features(args: argparse.Namespace) -> None:
    from bench.metrics.extractors import extract_outputs, signature
    from bench.metrics.shard_features import ShardFeatures, exact_stats, save_failed_shard, stored_features

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
        features=stored_features(features),
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
    from bench.metrics.extractors import backend_and_mode, signature
    from bench.metrics.feature_stats import (
        FeatureStats,
        frechet_distance_of_backend,
        inception_score,
        inception_score_from_probs,
    )
    from bench.metrics.shard_features import ShardFailed, ShardFeatures, merge_shards
    from bench.runtime.io import load_json
    from bench.samplers import resolved_options

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
    intervals = _bootstrap_intervals(cell, reference, backend, splits, spec.get("bootstrap", {}), args.threads)
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
            **(
                {"sampler_options": resolved_options(spec["sampler"]["fn"], spec["sampler"].get("options", {}))}
                if "sampler" in spec
                else {}
            ),
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
            # The speed options each shard's sampling job applied to the network (bench.runtime.speed records).
            "speed": [json.loads(s) for s in cell.speeds],
            **intervals,
        },
        Path(args.out),
    )


def _bootstrap_intervals(cell, reference, backend: str, splits: int, options: dict, threads: int) -> dict:
    """fd_ci and is_ci from the cell's per-sample features (None for shards written without them),
    the bootstrap's settings, how and where the FD resamples ran, and its wall time, which the
    cell's metric time leaves out."""
    from bench.metrics.bootstrap import BootstrapSpec, cell_fd_interval, is_interval
    from bench.metrics.feature_stats import frechet_distance_of_backend, inception_score, inception_score_from_probs

    boot = BootstrapSpec(**options)
    if cell.features is None or boot.resamples == 0:
        why = "shards hold no per-sample features" if cell.features is None else "resamples: 0 in the config"
        return {"fd_ci": None, "is_ci": None, "bootstrap": boot.record() | {"skipped": why}}
    start = time.perf_counter()
    fd_ci, fd_how = cell_fd_interval(cell.features, reference, lambda a, b: frechet_distance_of_backend(backend, a, b),
                                     boot, threads)
    if cell.is_kind == "logits":
        is_ci = is_interval(cell.is_values, lambda v: inception_score(v, splits=splits)[0], boot)
    else:
        is_ci = is_interval(cell.is_values, lambda v: inception_score_from_probs(v, splits=splits)[0], boot)
    return {"fd_ci": list(fd_ci), "is_ci": list(is_ci),
            "bootstrap": boot.record() | fd_how | {"wall_seconds": round(time.perf_counter() - start, 3)}}


def _version(backend: str) -> str:
    from importlib import metadata

    return metadata.version(backend)  # each FD backend is named after its distribution


def cmd_nll(args: argparse.Namespace) -> None:
    import torch

    from bench.core.denoiser import NonFiniteOutputError
    from bench.core.time_grids import MOMENT_GRIDS, time_grid
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.metrics.nll import standard_error, vlb_bits_per_dim
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    clock = StepClock.start()
    net, schedule, ckpt = load_model(Path(args.model))
    gamma = bound_terms = None
    if "analytic" in spec["variances"] or spec["grid"] in MOMENT_GRIDS:
        moments = _moments(args.moments, net)
        gamma, bound_terms = moments.gamma, moments.bound_terms
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
                from bench.methods.iddpm import learned_vlb_bits_per_dim

                bpd["learned"] = learned_vlb_bits_per_dim(
                    denoiser, x0, grid, seeds, max_level=split.max_level, clip_x0=spec["clip_x0"]
                )
            if "analytic" in spec["variances"]:
                from bench.methods.analytic import vlb_bits_per_dim_analytic

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
            # On a moment grid, each bound's own optimal trajectory.
            **({"grids": {v: g.tolist() for v, g in grids.items()}} if grids else {}),
            "clip_x0": spec["clip_x0"],
            # The decoder variance of each fixed or analytic bound (bench.metrics.nll.DECODER_VARIANCES).
            "decoder": {
                v: "chain" if v == "analytic" else spec.get("decoder", "trajectory") for v in bpd if v != "learned"
            },
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
    from bench.steps.collect import collect_metrics

    collect_metrics(_spec(args.spec), Path(args.results), Path(args.out))


def cmd_oracle(args: argparse.Namespace) -> None:
    from bench.steps.oracle import oracle_table

    atomic_json(oracle_table(_spec(args.spec)), Path(args.out))


def cmd_report(args: argparse.Namespace) -> None:
    from bench.report.render import render_report

    render_report(Path(args.results), [Path(p) for p in args.tables], Path(args.out))


def project_root() -> Path:
    """Where relative paths of a config (table specs, data roots) resolve: the checkout holding the Snakefile
    beside this package (the README's editable install), else the working directory."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "Snakefile").is_file() else Path.cwd()


def cmd_plan(args: argparse.Namespace) -> None:
    from bench.config import load_config
    from bench.steps.plan import format_plan, plan

    root = project_root()
    print(format_plan(plan(load_config(Path(args.config), root=root, check_paths=False), root=root)), end="")


def cmd_validate(args: argparse.Namespace) -> None:
    from bench.config import cells, load_config

    cfg = load_config(Path(args.config), root=project_root())
    print(f"{args.config}: valid; {len(cells(cfg))} cells")


# Each step's one-line description in `python -m bench --help`; the rule that calls it is in workflows/rules/.
STEPS = {
    "check-data": (cmd_check_data, "check a dataset's folder layout; write its image counts"),
    "train-extractor": (cmd_train_extractor, "train the digits CNN feature extractor (embedded default)"),
    "train": (cmd_train, "train a model; after an interruption it resumes from OUT.resume"),
    "fetch-checkpoint": (cmd_fetch_checkpoint, "download an official checkpoint and verify its md5 / sha256"),
    "convert-checkpoint": (cmd_convert_checkpoint, "convert an official checkpoint into our model format"),
    "moments": (cmd_moments, "Monte-Carlo Gamma_n of a model for Analytic-DPM (once per model)"),
    "sample": (cmd_sample, "draw one shard (a seed range) of a cell's samples"),
    "features": (cmd_features, "extractor features of one sample shard, summed for FD / IS"),
    "reference-stats": (cmd_reference_stats, "reference statistics of a dataset split, or published ones"),
    "fetch-weights": (cmd_fetch_weights, "download and verify the Inception weights"),
    "fd-is": (cmd_fd_is, "FD / FID and IS of a cell from its shards' features"),
    "nll": (cmd_nll, "variational bound in bits/dim of one trajectory and its reverse variances"),
    "ode-nll": (cmd_ode_nll, "probability-flow ODE likelihood in bits/dim of a continuous-time model"),
    "oracle": (cmd_oracle, "every sampler on a Gaussian mixture's exact eps (no network): energy distance by K"),
    "collect": (cmd_collect, "gather every cell's records into results/metrics.csv and provenance.json"),
    "report": (cmd_report, "render the HTML and LaTeX tables and figures from results/metrics.csv"),
    "plan": (cmd_plan, "print each table's cells, jobs, samples, NFE and estimated GPU hours"),
    "validate": (cmd_validate, "check a configuration (schema, names, options, data paths) without running it"),
}
SPEC_HELP = (
    "the step's settings as one JSON object, exactly what determines its output (the rule builds it from the "
    """config), e.g. check-data's '{"kind": "digits"}'"""
)


def build_parser() -> argparse.ArgumentParser:
    description = "dpm-bench's steps: each Snakemake rule runs one, and each also runs by hand."
    p = argparse.ArgumentParser(prog="python -m bench", description=description)
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, *, spec: bool = True, out: str | None = "the file this step writes") -> argparse.ArgumentParser:
        fn, description = STEPS[name]
        sp = sub.add_parser(name, help=description, description=description)
        sp.set_defaults(fn=fn)
        if spec:
            sp.add_argument("--spec", required=True, help=SPEC_HELP)
        if out:
            sp.add_argument("--out", required=True, help=out)
        return sp

    def threads(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=int, default=1, help="CPU threads of torch and BLAS (default 1)")

    def config_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--configfile", "--config", dest="config", required=True, metavar="FILE",
                        help="a dpm-bench config YAML, e.g. workflows/config/paper.yaml; its relative paths "
                             "resolve against the checkout that holds the Snakefile")

    sub.add_parser("perf", help="time the network, each sampler and a peer loop (python -m bench perf --help)")
    step("check-data", out="the summary JSON")
    step("train-extractor", out="the extractor's weights")
    threads(step("train", out="the model file; its resumable state goes to OUT.resume"))
    step("fetch-checkpoint", out="where the downloaded file goes").add_argument(
        "--lock", required=True, help="JSON file pinning the sha256 of a download that has no published hash")
    step("convert-checkpoint", out="the model file").add_argument(
        "--checkpoint", required=True, help="the downloaded official checkpoint")
    for name in ("sample", "nll", "moments"):
        sp = step(name, out="the shard (.npz)" if name == "sample" else "the result file")
        sp.add_argument("--model", required=True, help="the model file written by train or convert-checkpoint")
        threads(sp)
        if name != "moments":
            sp.add_argument("--moments", help="the model's Gamma_n file (moments), for samplers that need it")
    sp = step("ode-nll", out="the result JSON")
    sp.add_argument("--model", required=True, help="the model file written by train or convert-checkpoint")
    threads(sp)
    sp = step("features", out="the shard's features (.npz)")
    sp.add_argument("--extractor", required=True, help="extractor weights (digits classifier or Inception file)")
    sp.add_argument("--shard", required=True, help="the sample shard written by sample")
    threads(sp)
    sp = step("reference-stats", out="the statistics (.npz)")
    sp.add_argument("--extractor", help="extractor weights, to compute statistics of a dataset split")
    sp.add_argument("--cache", default="resources/references", help="download folder of published statistics")
    sp.add_argument("--lock", default="resources/references.lock.json", help="sha256 pins of unhashed downloads")
    threads(sp)
    sp = step("fetch-weights", out="the Inception weights file")
    sp.add_argument("--cache", default="resources/inception", help="download folder of Inception weights")
    sp.add_argument("--lock", default="resources/references.lock.json", help="sha256 pins of unhashed downloads")
    sp = step("fd-is", out="the cell's FD / IS record (JSON)")
    sp.add_argument("--features", nargs="+", required=True, help="the cell's per-shard features files, in seed order")
    sp.add_argument("--reference", required=True, help="reference statistics written by reference-stats")
    threads(sp)
    step("oracle", out="the oracle table's record (JSON)")
    sp = step("collect", out="results/metrics.csv")
    sp.add_argument("--results", required=True, help="the results folder whose cells/ it reads")
    sp = step("report", spec=False, out="the report folder")
    sp.add_argument("--results", required=True, help="the results folder holding metrics.csv")
    sp.add_argument("--tables", nargs="+", required=True, help="the table specs (YAML) to render")
    config_flag(step("plan", spec=False, out=None))
    config_flag(step("validate", spec=False, out=None))
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.config import ConfigError

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
    except ConfigError as err:
        print("invalid configuration:", file=sys.stderr)
        for line in str(err).splitlines():
            print(f"  - {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
