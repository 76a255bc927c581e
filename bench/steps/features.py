"""The features step: the extractor's features of one sample shard, summed exactly for FD and IS."""

from __future__ import annotations

from pathlib import Path

from bench.metrics.extractors import extract_outputs, runs_on_host, signature
from bench.metrics.shard_features import ShardFeatures, exact_stats, save_failed_shard, stored_features
from bench.runtime.stepclock import StepClock
from bench.steps.shard_format import FailedShard, SampleShard


def run(spec: dict, out: Path, extractor: Path, shard: Path, threads: int) -> None:
    """Features of the sample ``shard`` under ``spec["extractor"]`` (weights ``extractor``); a failed shard's
    error is passed on to the cell instead."""
    try:
        samples = SampleShard.load(shard)
    except FailedShard as err:
        save_failed_shard(out, str(err))
        return
    clock = extractor_clock(spec["extractor"], threads)
    features, is_kind, is_values = extract_outputs(spec["extractor"], extractor, samples.images, samples.max_level)
    timing = clock.record()
    ShardFeatures(
        stats=exact_stats(features),
        is_kind=is_kind,
        is_values=is_values,
        seeds=samples.seeds,
        extractor=signature(spec["extractor"]),
        nfe=samples.nfe,
        grid=samples.grid,
        sample_wall_seconds=samples.wall_seconds,
        feature_wall_seconds=timing["wall_seconds"],
        sample_device_seconds=samples.device_seconds,
        feature_device_seconds=timing["device_seconds"],
        devices=tuple(sorted({samples.device, timing["device"]})),
        speeds=(samples.speed,),
        features=stored_features(features),
    ).save(out)


def extractor_clock(extractor: dict, threads: int) -> StepClock:
    """The clock of a step that runs ``extractor``: on the host for numpy's digits CNN, else on a chosen device."""
    if runs_on_host(extractor):
        return StepClock.on_host()
    import torch  # only here: the digits CNN's short jobs would pay more for importing torch than for their work

    torch.set_num_threads(threads)
    return StepClock.start()
