"""The precision-recall step: improved precision and recall of a cell from its shards' per-sample features."""

from __future__ import annotations

from pathlib import Path

from bench.metrics.extractors import signature
from bench.metrics.precision_recall import precision_recall
from bench.metrics.shard_features import ShardFailed, load_cell
from bench.runtime.io import atomic_json
from bench.runtime.stepclock import StepClock
from bench.steps.reference_features import ReferenceFeatures

# The distance block's arithmetic, as the record states it (bench.metrics.precision_recall).
DISTANCES = "squared Euclidean in float16, float32 where a block overflows (guided-diffusion evaluator.py)"


def run(spec: dict, out: Path, features: list[Path], reference: Path, threads: int) -> None:
    """Precision and recall of the cell's merged per-shard ``features`` against the ``reference`` features.

    A failed shard makes the record {"status": "failed", "error"}; shards without per-sample features, of another
    extractor than the reference's, or holding other than exactly spec["n_samples"] distinct seeds are refused.
    """
    try:
        cell = load_cell(features, spec["n_samples"], spec["context"])
    except ShardFailed as err:
        atomic_json({"status": "failed", "error": str(err)}, out)
        return
    if cell.features is None:
        raise SystemExit(f"cell {spec['context']}: its features files hold no per-sample features; "
                         "rerun its features jobs")
    ref = ReferenceFeatures.load(reference)
    if {cell.extractor, ref.extractor} != {signature(spec["extractor"])}:
        raise SystemExit(f"cell {spec['context']}: features from {cell.extractor!r}, reference features from "
                         f"{ref.extractor!r}, expected {signature(spec['extractor'])!r}")
    import torch

    from bench.runtime.device import device_label, select_device

    torch.set_num_threads(threads)
    choice = select_device()
    clock = StepClock.on_host()
    k, rows, cols = spec["k"], spec["row_batch_size"], spec["col_batch_size"]
    device = choice.device if choice.device.type == "cuda" else None
    precision, recall = precision_recall(ref.features, cell.features, k=k, row_batch_size=rows,
                                         col_batch_size=cols, device=device)
    metric = clock.record()
    atomic_json(
        {
            "status": "ok",
            "precision": precision,
            "recall": recall,
            "k": k,
            "row_batch_size": rows,
            "col_batch_size": cols,
            "distances": DISTANCES,
            "gemm_device": device_label(choice) if device is not None else "cpu",
            "n": cell.stats.n,
            "extractor": cell.extractor,
            "reference": ref.split,
            "reference_n": len(ref.indices),
            "reference_split_size": ref.split_size,
            "reference_seed": ref.seed,
            "reference_features_sha256": ref.content_hash(),
            "nfe": cell.nfe,
            "devices": sorted({"cpu", *([device_label(choice)] if device is not None else [])}),
            **metric,
        },
        out,
    )
