"""Bootstrap intervals of FD and IS: coverage of a known FD, exact per-sample storage, the CSV columns,
and the report's best/tie marking and LaTeX options built on them."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.metrics.bootstrap import BootstrapSpec, basic_interval, fd_interval, is_interval
from bench.metrics.feature_stats import FeatureStats, fd_from_stats, inception_score
from bench.metrics.shard_features import ShardFeatures, exact_stats, fixed_point, merge_shards, stored_features
from bench.report.latex import table_tex
from bench.report.results import METRICS_COLUMNS, ResultsError, read_metrics
from bench.report.specs import load_table_spec
from bench.report.tables import SPREAD_CI, SPREAD_SD, build_table
from bench.steps.collect import COLUMNS, metric_rows


def test_fd_interval_covers_the_true_fd_at_its_level() -> None:
    """X ~ N(mu, I) against the exact N(0, I): the true FD is |mu|^2 (no trace term)."""
    d, n, trials = 3, 400, 60
    mu = np.array([0.5, -0.3, 0.2])
    reference = FeatureStats.from_moments(np.zeros(d), np.eye(d), n=10**9)
    spec = BootstrapSpec(resamples=200, seed=1, level=0.9)
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(trials):
        x = mu + rng.standard_normal((n, d))
        low, high = fd_interval(x, reference, fd_from_stats, spec)
        assert low <= fd_from_stats(FeatureStats.from_features(x), reference) <= high
        hits += low <= float(mu @ mu) <= high
    # 90% nominal; the binomial sd over 60 trials is 0.04.
    assert 0.78 <= hits / trials <= 1.0


def test_fd_resample_by_counts_equals_the_resampled_matrix() -> None:
    rng = np.random.default_rng(3)
    x = fixed_point(rng.standard_normal((50, 4)))
    reference = FeatureStats.from_features(fixed_point(rng.standard_normal((80, 4)) + 1))
    spec = BootstrapSpec(resamples=5, seed=2)
    rows = np.random.default_rng(2).integers(0, 50, size=(5, 50))
    direct = [fd_from_stats(FeatureStats.from_features(x[r]), reference) for r in rows]
    full = fd_from_stats(FeatureStats.from_features(x), reference)
    assert fd_interval(x, reference, fd_from_stats, spec) == pytest.approx(
        basic_interval(full, np.array(direct), spec.level, floor=0.0), rel=1e-12)


def test_interval_is_seeded_and_resamples_are_configurable() -> None:
    logits = np.random.default_rng(0).standard_normal((300, 10)) * 3
    score = lambda v: inception_score(v, splits=2)[0]  # noqa: E731
    first = is_interval(logits, score, BootstrapSpec(resamples=50, seed=4))
    assert first == is_interval(logits, score, BootstrapSpec(resamples=50, seed=4))
    assert first != is_interval(logits, score, BootstrapSpec(resamples=50, seed=5))
    assert first[0] <= score(logits) <= first[1]


def test_basic_interval_reflects_the_resamples_around_the_estimate() -> None:
    values = np.linspace(10.0, 14.0, 1001)  # resamples biased up by 2 around the estimate 10
    low, high = basic_interval(10.0, values, 0.9)
    assert (low, high) == pytest.approx((2 * 10 - 13.8, 2 * 10 - 10.2))
    assert basic_interval(0.1, values, 0.9, floor=0.0) == (0.0, 0.0)


@pytest.mark.parametrize(("resamples", "level"), [(1, 0.95), (-1, 0.95), (10, 1.0), (10, 0.0)])
def test_bad_bootstrap_settings_are_refused(resamples: int, level: float) -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        BootstrapSpec(resamples=resamples, level=level)


def shard(features: np.ndarray, first_seed: int) -> ShardFeatures:
    n = len(features)
    return ShardFeatures(
        stats=exact_stats(features), is_kind="logits", is_values=np.zeros((n, 3)),
        seeds=np.arange(first_seed, first_seed + n), extractor="digits_cnn/x", nfe=2, grid=np.array([0, 1]),
        sample_wall_seconds=0.0, feature_wall_seconds=0.0, sample_device_seconds=0.0,
        feature_device_seconds=0.0, devices=("cpu",), speeds=("{}",), features=stored_features(features),
    )


def test_shards_keep_per_sample_features_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-63.9, 63.9, size=(40, 5))
    assert np.array_equal(stored_features(x).astype(np.float64), fixed_point(x))
    parts = [shard(x[:15], 0), shard(x[15:], 15)]
    loaded = [ShardFeatures.load(p.save(tmp_path / f"s{i}.npz")) for i, p in enumerate(parts)]
    merged = merge_shards(loaded)
    assert np.array_equal(merged.features.astype(np.float64), fixed_point(x))
    assert FeatureStats.from_features(merged.features).content_hash() == merged.stats.content_hash()
    old = replace(parts[0], features=None)
    assert ShardFeatures.load(old.save(tmp_path / "old.npz")).features is None
    assert merge_shards([old, parts[1]]).features is None


CELL = {"dataset": "digits", "model": "mlp", "family": "ddpm", "sampler": "ddim", "sampler_label": "DDIM",
        "grid": "uniform", "K": 10, "seed": 0, "fd_extractor": "digits_cnn/x"}
RECORD = {"status": "ok", "fd": 5.0, "is_mean": 8.0, "fd_ci": [4.5, 5.75], "is_ci": [7.5, 8.25], "nfe": 10, "n": 2000,
          "extractor": "digits_cnn/x", "reference_stats_sha256": "5" * 64, "devices": ["cpu"],
          "wall_seconds": 1.0, "device_seconds": 1.0}


def test_metrics_rows_carry_the_interval_beside_the_value() -> None:
    rows = {r["metric"]: r for r in metric_rows(CELL, {"fd_is": RECORD})}
    assert (rows["fd_digits"]["ci_low"], rows["fd_digits"]["ci_high"]) == (4.5, 5.75)
    assert (rows["is_digits"]["ci_low"], rows["is_digits"]["ci_high"]) == (7.5, 8.25)
    assert COLUMNS == METRICS_COLUMNS


def write_csv(path: Path, header: tuple[str, ...], rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def csv_rows(values: dict[str, tuple[float, float | None, float | None]]) -> list[dict]:
    base = {"dataset": "digits", "model": "mlp", "family": "ddpm", "sampler_label": "s", "grid": "uniform",
            "K": 10, "nfe": 10, "metric": "fd_digits", "n_samples": 2000, "seed": 0, "replicate": 0,
            "status": "ok"}
    return [base | {"sampler": s, "value": v, "ci_low": "" if lo is None else lo, "ci_high": "" if hi is None else hi}
            for s, (v, lo, hi) in values.items()]


def test_read_metrics_takes_intervals_and_older_files(tmp_path: Path) -> None:
    rows = csv_rows({"a": (5.0, 4.0, 6.0), "b": (7.0, None, None)})
    records = read_metrics(write_csv(tmp_path / "m.csv", METRICS_COLUMNS, rows))
    assert [(r.ci_low, r.ci_high) for r in records] == [(4.0, 6.0), (None, None)]
    legacy = read_metrics(write_csv(tmp_path / "old.csv", METRICS_COLUMNS[:-2], rows))
    assert [(r.value, r.ci_low) for r in legacy] == [(5.0, None), (7.0, None)]
    bad = csv_rows({"a": (5.0, 6.0, 4.0)})
    with pytest.raises(ResultsError, match="line 2: columns 'ci_low', 'ci_high' must both be empty or low <= high"):
        read_metrics(write_csv(tmp_path / "bad.csv", METRICS_COLUMNS, bad))


SPEC = """
id: t
title: T
metric: fd_digits
metric_label: FD
better: lower
decimals: 2
dataset: digits
columns: {field: K, values: [10], label: K}
rows:
  - {label: A, model: mlp, sampler: a}
  - {label: B, model: mlp, sampler: b}
  - {label: C, model: mlp, sampler: c}
"""


def table(tmp_path: Path, values: dict, extra: str = ""):
    (tmp_path / "t.yaml").write_text(SPEC.replace("rows:", extra + "rows:"))
    records = read_metrics(write_csv(tmp_path / "m.csv", METRICS_COLUMNS, csv_rows(values)))
    return build_table(load_table_spec(tmp_path / "t.yaml"), records)


def marks(data) -> list[tuple[bool, bool]]:
    return [(row[0].best, row[0].tie) for row in data.cells]


def test_best_only_where_its_interval_overlaps_no_other(tmp_path: Path) -> None:
    apart = table(tmp_path, {"a": (5.0, 4.5, 5.5), "b": (7.0, 6.0, 8.0), "c": (9.0, 8.5, 9.5)})
    assert marks(apart) == [(True, False), (False, False), (False, False)]
    assert apart.cells[0][0].spread == SPREAD_CI and apart.cells[0][0].interval == (4.5, 5.5)
    close = table(tmp_path, {"a": (5.0, 4.5, 6.5), "b": (6.0, 5.5, 7.0), "c": (9.0, 8.5, 9.5)})
    assert marks(close) == [(False, True), (False, True), (False, False)]
    tex = table_tex(close)
    assert r"\underline{5.00}" in tex and r"\underline{6.00}" in tex and r"\textbf" not in tex
    # A column where one cell has no interval is judged on the values alone, as before intervals.
    partial = table(tmp_path, {"a": (5.0, 4.5, 6.5), "b": (6.0, None, None), "c": (9.0, 8.5, 9.5)})
    assert marks(partial) == [(True, False), (False, False), (False, False)]


@pytest.mark.parametrize(("option", "cell"), [("none", "5.00"), ("pm", r"5.00 $\pm$ 0.75"),
                                              ("interval", "5.00 [4.50, 6.00]")])
def test_latex_shows_the_interval_as_the_spec_asks(tmp_path: Path, option: str, cell: str) -> None:
    data = table(tmp_path, {"a": (5.0, 4.5, 6.0), "b": (9.0, 8.5, 9.5), "c": (9.5, 9.0, 10.0)},
                 extra=f"latex_interval: {option}\n")
    assert f"A & \\textbf{{{cell.split(' ', 1)[0]}}}{cell[4:]} \\\\" in table_tex(data)


def test_replicates_keep_the_sd_as_their_spread(tmp_path: Path) -> None:
    rows = csv_rows({"a": (5.0, 4.0, 6.0)})
    rows.append(rows[0] | {"replicate": 1, "value": 6.0, "seed": 1})
    data = build_table(load_table_spec(_spec(tmp_path)), read_metrics(write_csv(tmp_path / "r.csv", METRICS_COLUMNS,
                                                                                  rows)))
    cell = data.cells[0][0]
    assert cell.spread == SPREAD_SD and cell.interval == pytest.approx((5.5 - 0.7071068, 5.5 + 0.7071068))


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "t.yaml").write_text(SPEC)
    return tmp_path / "t.yaml"
