"""The reference-stats step: FD's reference statistics, of a dataset split or published ones, with their record."""

from __future__ import annotations

from pathlib import Path

from bench.metrics.extractors import backend_and_mode, extract_outputs, signature
from bench.runtime.io import atomic_json
from bench.steps.features import extractor_clock


def run(spec: dict, out: Path, extractor: Path | None, cache: Path, lock: Path, threads: int) -> None:
    """Statistics of ``spec["reference"]`` (published: fetched into ``cache``, pinned in ``lock``) or else of the
    dataset split ``spec["split"]`` under the extractor (weights ``extractor``); the record goes beside, as .json."""
    backend, mode = backend_and_mode(spec["extractor"])
    clock = extractor_clock(spec["extractor"], threads)
    # Each branch imports only what it uses: a published download needs neither the dataset nor the sums' code.
    if "reference" in spec:
        from bench.checkpoints.references import statistics_entry
        from bench.metrics.reference_stats import fetch_statistics

        entry = statistics_entry(spec["reference"])
        if entry.mode != mode:
            raise SystemExit(
                f"reference statistics {entry.name!r} were made in mode {entry.mode!r}; "
                f"the extractor runs in mode {mode!r}"
            )
        stats, digest = fetch_statistics(entry, cache, lock)
        meta = {"reference": entry.name, "url": entry.url, "source": entry.source}
    else:
        from bench.data import load_dataset
        from bench.metrics.feature_stats import FeatureStats
        from bench.metrics.shard_features import fixed_point

        split = load_dataset(spec["dataset"], spec["split"])
        features, _, _ = extract_outputs(spec["extractor"], extractor, split.images, split.max_level)
        stats = FeatureStats.from_features(fixed_point(features))
        digest = stats.content_hash()
        meta = {"reference": spec["split"]}
    stats.save(out)
    meta |= {
        "n_images": stats.n,
        "reference_stats_sha256": digest,
        "extractor": signature(spec["extractor"]),
        "backend": backend,
        "mode": mode,
        **clock.record(),
    }
    atomic_json(meta, out.with_suffix(".json"))
