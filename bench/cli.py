"""``python -m bench <step>``: each Snakemake rule calls one step; every step also runs by hand.

Steps take a JSON ``--spec`` holding exactly the settings that determine their output, so that
Snakemake reruns a job when, and only when, something it depends on changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.io import atomic_json, load_npz


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is not valid JSON: {err}") from None


def cmd_train_extractor(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.metrics.classifier import accuracy, save_classifier, train_classifier

    spec = _spec(args.spec)
    train = load_dataset(spec["dataset"], "train")
    test = load_dataset(spec["dataset"], "test")
    t0 = time.perf_counter()
    model = train_classifier(train, seed=spec["extractor"].get("seed", 0), epochs=spec["extractor"].get("epochs", 12))
    acc = accuracy(model, test)
    save_classifier(model, Path(args.out))
    atomic_json({"test_accuracy": acc, "wall_seconds": time.perf_counter() - t0}, Path(args.out).with_suffix(".json"))


def cmd_train(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.models import build_network, save_model, training_loss
    from bench.schedules import DiscreteSchedule
    from bench.training import TrainConfig, train_eps_model

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    model_cfg = spec["model"]
    train = load_dataset(spec["dataset"], "train")
    data = torch.from_numpy(levels_to_unit(train.images, train.max_level))
    shape = tuple(data.shape[1:])
    torch.manual_seed(model_cfg["train"]["seed"])  # the initial weights are part of the seeded run
    net = build_network(model_cfg["network"], channels=shape[0], image_size=shape[1])
    schedule = DiscreteSchedule.named(model_cfg["schedule"]["name"], model_cfg["schedule"]["T"])
    out = Path(args.out)
    t0 = time.perf_counter()
    ema, losses = train_eps_model(
        net,
        data,
        schedule,
        TrainConfig(**model_cfg["train"]),
        resume_path=out.with_name(out.name + ".resume"),
        progress=True,
        loss_fn=training_loss(model_cfg, train.max_level),
    )
    info = {"final_loss": float(np.mean(losses[-200:])), "steps": len(losses), "wall_seconds": time.perf_counter() - t0}
    save_model(out, ema, model_cfg, shape, train.max_level, info)
    out.with_name(out.name + ".resume").unlink(missing_ok=True)


def cmd_sample(args: argparse.Namespace) -> None:
    from bench.grids import MOMENT_GRIDS
    from bench.models import load_model
    from bench.sampling import sample_shard

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    net, schedule, ckpt = load_model(Path(args.model))
    sampler = dict(spec["sampler"])
    gamma = None
    if sampler.get("inputs", {}).get("gamma") == "moments" or sampler["grid"] in MOMENT_GRIDS:
        gamma = _gamma(args.moments, net)
    if sampler.get("inputs", {}).get("gamma") == "moments":
        sampler["options"] = {**sampler.get("options", {}), "gamma": gamma}
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
        gamma=gamma,
    )


def _gamma(path: str | None, net: torch.nn.Module) -> torch.Tensor:
    """Gamma_n of the moments artifact, refused if it was estimated for another network."""
    from bench.analytic import load_moments, model_hash

    if path is None:
        raise SystemExit("this sampler needs --moments (the Analytic-DPM Gamma_n artifact)")
    return load_moments(Path(path), model_hash=model_hash(net)).gamma


def cmd_moments(args: argparse.Namespace) -> None:
    from bench.analytic import estimate_gamma, model_hash, save_moments
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.families import DiscreteEpsDenoiser
    from bench.models import load_model

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    net, schedule, _ = load_model(Path(args.model))
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level))[: spec.get("M")]
    seeds = torch.arange(len(x0), dtype=torch.int64) + spec["seed"]
    with torch.inference_mode():
        gamma = estimate_gamma(DiscreteEpsDenoiser(net, schedule), x0, None, seeds, batch_size=spec["batch_size"])
    save_moments(Path(args.out), gamma, model_hash=model_hash(net), n_samples=len(x0), seed=spec["seed"])


def cmd_fd_is(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.metrics.fid_is import compute_fd_is

    spec = _spec(args.spec)
    shards = [load_npz(Path(p), ("seeds",)) for p in args.shards]
    errors = [str(s["error"]) for s in shards if "error" in s]
    if errors:
        atomic_json({"status": "failed", "error": errors[0]}, Path(args.out))
        return
    for path, shard in zip(args.shards, shards, strict=True):
        missing = [k for k in ("images", "max_level", "nfe", "wall_seconds", "grid") if k not in shard]
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
    t0 = time.perf_counter()
    result = compute_fd_is(images, int(shards[0]["max_level"]), ref.images, Path(args.extractor))
    atomic_json(
        {
            "fd": result["fd"],
            "is_mean": result["is_mean"],
            "is_std": result["is_std"],
            "n": result["n"],
            "backend": result["backend"],
            "backend_version": result["backend_version"],
            "reference_split": spec["reference_split"],
            "reference_n": len(ref.images),
            "nfe": int(shards[0]["nfe"]),
            "grid": shards[0]["grid"].tolist(),
            "sample_wall_seconds": float(sum(s["wall_seconds"] for s in shards)),
            "metric_wall_seconds": time.perf_counter() - t0,
        },
        Path(args.out),
    )


def cmd_nll(args: argparse.Namespace) -> None:
    from bench.data import load_dataset
    from bench.data.digits import levels_to_unit
    from bench.families import NonFiniteOutputError
    from bench.grids import MOMENT_GRIDS, time_grid
    from bench.metrics.nll import vlb_bits_per_dim
    from bench.models import load_model, make_denoiser

    spec = _spec(args.spec)
    torch.set_num_threads(args.threads)
    net, schedule, ckpt = load_model(Path(args.model))
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level))
    gamma = None
    if "analytic" in spec["variances"] or spec["grid"] in MOMENT_GRIDS:
        gamma = _gamma(args.moments, net)
    grid = time_grid(
        spec["grid"], schedule.T, spec["K"], alpha_bars=schedule.alpha_bars, gamma=gamma, **spec.get("grid_options", {})
    )
    denoiser = make_denoiser(ckpt["config"]["family"], net, schedule)
    seeds = torch.arange(len(x0), dtype=torch.int64) + spec["seed"]
    t0 = time.perf_counter()
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
        atomic_json({"status": "failed", "error": message}, Path(args.out))
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
            "wall_seconds": time.perf_counter() - t0,
        },
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

    print(format_plan(plan(load_config(Path(args.config)))), end="")


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
    for name, fn in (("sample", cmd_sample), ("nll", cmd_nll), ("moments", cmd_moments)):
        sp = step(name, fn)
        sp.add_argument("--model", required=True)
        sp.add_argument("--threads", type=int, default=1)
        if fn is not cmd_moments:
            sp.add_argument("--moments", help="Analytic-DPM moments artifact, for samplers that need Gamma_n")
    sp = step("fd-is", cmd_fd_is)
    sp.add_argument("--extractor", required=True)
    sp.add_argument("--shards", nargs="+", required=True)
    sp = step("collect", cmd_collect)
    sp.add_argument("--results", required=True)
    sp = step("report", cmd_report, spec=False)
    sp.add_argument("--results", required=True)
    sp.add_argument("--tables", nargs="+", required=True)
    sp = step("plan", cmd_plan, spec=False, out=False)
    sp.add_argument("--config", required=True)
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
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
