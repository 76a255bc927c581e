"""The fd-is step: FD / FID and IS of a cell from its shards' features, and the cell's fd_is.json record."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

from bench.core.labels import LABEL_PROTOCOL
from bench.metrics.bootstrap import BootstrapSpec, cell_fd_interval, is_interval
from bench.metrics.extractors import backend_and_mode, signature
from bench.metrics.feature_stats import (
    FeatureStats,
    frechet_distance_of_backend,
    inception_score,
    inception_score_from_probs,
)
from bench.metrics.shard_features import ShardFailed, ShardFeatures, load_cell
from bench.runtime.io import atomic_json, load_json
from bench.runtime.stepclock import StepClock
from bench.samplers import resolved_options


def run(spec: dict, out: Path, features: list[Path], reference: Path, threads: int) -> None:
    """Merge the cell's per-shard ``features``, score them against the ``reference`` statistics, write the record.

    A failed shard makes the record {"status": "failed", "error"}; a cell whose shards hold other than
    exactly spec["n_samples"] distinct seeds, or features of another extractor, is refused.
    """
    try:
        cell = load_cell(features, spec["n_samples"], spec["context"])
    except ShardFailed as err:
        atomic_json({"status": "failed", "error": str(err)}, out)
        return
    if cell.extractor != signature(spec["extractor"]):
        raise SystemExit(
            f"cell {spec['context']}: features from {cell.extractor!r}, expected {signature(spec['extractor'])!r}"
        )
    reference_stats = FeatureStats.load(reference)
    ref_meta = load_json(reference.with_suffix(".json"))
    if ref_meta["extractor"] != cell.extractor:
        raise SystemExit(
            f"reference statistics {reference} come from {ref_meta['extractor']!r}, not {cell.extractor!r}"
        )
    backend, mode = backend_and_mode(spec["extractor"])
    clock = StepClock.on_host()
    fd = frechet_distance_of_backend(backend, cell.stats, reference_stats)
    splits = spec.get("is_splits", 10)
    if cell.is_kind == "logits":
        is_mean, is_std = inception_score(cell.is_values, splits=splits)
    else:
        is_mean, is_std = inception_score_from_probs(cell.is_values, splits=splits)
    metric = clock.record()
    intervals = bootstrap_intervals(cell, reference_stats, backend, splits, spec.get("bootstrap", {}), threads)
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
            # each FD backend is named after its distribution
            "backend_version": metadata.version(backend),
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
            **(
                {"class_labels": {"label_dim": spec["label_dim"], "protocol": LABEL_PROTOCOL}}
                if "label_dim" in spec
                else {}
            ),
            # The Monte-Carlo size of the Gamma_n the samples used, where the sampler names its own (the sample
            # step refused moments of another M).
            **({"moments_M": spec["sampler"]["moments_M"]} if "moments_M" in spec.get("sampler", {}) else {}),
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
        out,
    )


def bootstrap_intervals(
    cell: ShardFeatures, reference: FeatureStats, backend: str, splits: int, options: dict, threads: int
) -> dict:
    """fd_ci and is_ci from the cell's per-sample features (None for shards written without them),
    the bootstrap's settings, how and where the FD resamples ran, and its wall time, which the cell's
    metric time leaves out."""
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
