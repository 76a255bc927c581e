"""Metrics a table reads off other cells' rows of metrics.csv instead of measuring them (a spec's ``derived`` key)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from bench.report.results import MetricRecord

# rule name -> what its value is (the table legend states it).
DERIVED_RULES = {
    "least_k": "the least K of the configured K grid whose value is at most the threshold (no interpolation "
    "between grid points); none when no K of the grid reaches it",
}


def least_k(curve: Mapping[int, float | None], threshold: float) -> int | None:
    """The least K whose value is <= ``threshold`` (Analytic-DPM Table 3's "least K reaching FID ~ 6").

    A K without a value (not yet run, or failed) below the first K that reaches the threshold leaves the answer
    open: None then, as when no K reaches it.
    """
    for K in sorted(curve):
        value = curve[K]
        if value is None:
            return None
        if value <= threshold:
            return K
    return None


def derived_records(metric: str, derived: dict, records: Sequence[MetricRecord]) -> list[MetricRecord]:
    """Records of ``metric``, one per (dataset, model, sampler, grid) curve of ``derived["metric"]``: its least K.

    The record keeps the identity of the cell at that K (its NFE, seed, samples); replicates are averaged first.
    """
    curves: dict[tuple, dict[int, list[MetricRecord]]] = {}
    for r in records:
        if r.metric == derived["metric"]:
            curves.setdefault((r.dataset, r.model, r.family, r.sampler, r.grid), {}).setdefault(r.K, []).append(r)
    out = []
    for by_k in curves.values():
        means = {}
        for K, reps in by_k.items():
            values = [r.value for r in reps if r.status == "ok" and r.value is not None]
            means[K] = sum(values) / len(values) if values and len(values) == len(reps) else None
        K = least_k(means, derived["threshold"])
        if K is not None:
            first = min(by_k[K], key=lambda r: r.replicate)
            out.append(replace(first, metric=metric, value=float(K), replicate=0, ci_low=None, ci_high=None))
    return out
