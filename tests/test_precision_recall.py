"""Improved precision and recall (Kynkaanniemi et al. 2019) as guided-diffusion's evaluator computes them: hand cases,
a brute-force reference, the precision-recall and reference-features steps, metrics.csv rows, config and plan."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from bench.cli import main
from bench.config import Cell, ConfigError, load_config, precision_recall_cells, read_yaml, validate_config
from bench.metrics.extractors import signature
from bench.metrics.precision_recall import manifold_radii, precision_recall, squared_distances
from bench.metrics.shard_features import ShardFeatures, exact_stats, save_failed_shard, stored_features
from bench.report.specs import TableSpecError, load_table_spec
from bench.runtime.io import CorruptFileError
from bench.steps import collect
from bench.steps.reference_features import ReferenceFeatures, reference_indices

ROOT = Path(__file__).resolve().parents[1]
LINE = np.arange(10.0)[:, None]  # ten reference points on a line, one apart


def brute_force(reference: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019, Eqs. 1-3, point by point with exact squared distances."""

    def radii(x: np.ndarray) -> list[float]:
        # the k-th nearest other point: the (k+1)-th smallest distance with the point's own zero
        return [sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(len(x)))[k] for i in range(len(x))]

    def inside(points: np.ndarray, centres: np.ndarray, r: list[float]) -> float:
        hits = [any(((p - c) ** 2).sum() <= rc for c, rc in zip(centres, r, strict=True)) for p in points]
        return sum(hits) / len(points)

    ref, smp = reference.astype(np.float64), samples.astype(np.float64)
    return inside(smp, ref, radii(ref)), inside(ref, smp, radii(smp))


def grid_features(rng: np.random.Generator, n: int, dim: int, loc: float = 0.4) -> np.ndarray:
    """Inception-like features on the shards' fixed-point grid (bench.metrics.shard_features)."""
    return stored_features(np.abs(rng.normal(loc, 0.5, (n, dim))))


# The metric -------------------------------------------------------------------------------------------------------


def test_a_radius_is_the_squared_distance_to_the_kth_neighbour_on_a_line():
    assert manifold_radii(LINE, k=1).tolist() == [1.0] * 10
    # the ends reach three steps for their third neighbour, every inner point two
    assert manifold_radii(LINE, k=3).tolist() == [9.0] + [4.0] * 8 + [9.0]


def test_precision_and_recall_of_points_on_a_line_by_hand():
    # Reference balls (k = 1) have radius 1: samples 0 and 3 lie in them, 20 and 30 do not -> precision 1/2.
    # Sample balls: 0 and 3 reach 3 (each other), 20 and 30 reach 10 (each other): they hold references 0..6 -> 7/10.
    samples = np.array([[0.0], [3.0], [20.0], [30.0]])
    assert precision_recall(LINE, samples, k=1) == (0.5, 0.7)
    assert brute_force(LINE, samples, 1) == (0.5, 0.7)


def test_identical_sets_have_precision_and_recall_one():
    x = grid_features(np.random.default_rng(0), 60, 64)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_far_apart_sets_have_precision_and_recall_zero_through_the_float32_fallback():
    rng = np.random.default_rng(1)
    near, far = grid_features(rng, 20, 32), grid_features(rng, 30, 32, loc=60.0)
    # |far|^2 ~ 32 * 60^2 overflows float16 (65504): those blocks are recomputed in float32, as evaluator.py does
    assert (np.square(far.astype(np.float64)).sum(axis=1) > np.finfo(np.float16).max).all()
    assert precision_recall(near, far) == (0.0, 0.0)
    assert precision_recall(far, near) == (0.0, 0.0)


def test_distances_are_float16_blocks_with_a_float32_fallback():
    # 20^2 - 2 * 20 * 4.25 + 4.25^2 = 248.0625, which float16 (eleven significant bits) rounds to 248
    assert squared_distances(np.array([[20.0]]), np.array([[4.25]])).tolist() == [[248.0]]
    # 300^2 = 90000 overflows float16: the block is float32's
    assert squared_distances(np.array([[300.0, 0.0]]), np.array([[0.0, 0.0]])).tolist() == [[90000.0]]
    assert squared_distances(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]])).dtype == np.float32


@pytest.mark.parametrize("k", [1, 3, 5])
def test_blocks_of_any_size_agree_with_brute_force_on_integer_points(k):
    # Small integers make every float16 step exact and ties common (the balls are closed: <=).
    rng = np.random.default_rng(k)
    ref, smp = rng.integers(0, 6, (37, 3)).astype(float), rng.integers(1, 7, (53, 3)).astype(float)
    expected = brute_force(ref, smp, k)
    for rows, cols in ((10_000, 10_000), (7, 11), (1, 53), (37, 1)):
        assert precision_recall(ref, smp, k=k, row_batch_size=rows, col_batch_size=cols) == expected


def test_block_sizes_and_the_torch_product_do_not_change_a_bit_on_the_feature_grid():
    rng = np.random.default_rng(2)
    ref, smp = grid_features(rng, 90, 128), grid_features(rng, 110, 128, loc=0.5)
    expected = precision_recall(ref, smp)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
    assert precision_recall(ref, smp, row_batch_size=13, col_batch_size=29) == expected
    assert precision_recall(ref, smp, row_batch_size=40, col_batch_size=7, device=torch.device("cpu")) == expected
    assert np.array_equal(manifold_radii(smp, row_batch_size=17, col_batch_size=9), manifold_radii(smp))


def test_k_must_leave_a_neighbour_and_features_must_match():
    with pytest.raises(ValueError, match="k must lie in 1..3 \\(one less than the 4 points\\), got 4"):
        manifold_radii(LINE[:4], k=4)
    with pytest.raises(ValueError, match="features must be \\[N, F\\] matrices of one F, got \\[10, 1\\] and \\[2, 2\\]"):
        precision_recall(LINE, np.zeros((2, 2)))


# The steps --------------------------------------------------------------------------------------------------------

EXTRACTOR = {"kind": "digits_cnn"}
SCHEMA = yaml.safe_load((ROOT / "bench/schema/results.schema.yaml").read_text())


def write_shard(path: Path, features: np.ndarray, first_seed: int, extractor: str = signature(EXTRACTOR)) -> Path:
    n = len(features)
    return ShardFeatures(
        stats=exact_stats(features), is_kind="logits", is_values=np.zeros((n, 3)),
        seeds=np.arange(first_seed, first_seed + n), extractor=extractor, nfe=4, grid=np.arange(4),
        sample_wall_seconds=1.0, feature_wall_seconds=0.5, sample_device_seconds=1.0, feature_device_seconds=0.5,
        devices=("cpu",), speeds=("null",), features=stored_features(features),
    ).save(path)


def reference_file(path: Path, features: np.ndarray, extractor: str = signature(EXTRACTOR)) -> Path:
    return ReferenceFeatures(features=stored_features(features), indices=np.arange(len(features)) * 3,
                             split="train", split_size=3 * len(features), seed=0, extractor=extractor).save(path)


def pr_spec(n: int) -> dict:
    return {"k": 3, "row_batch_size": 10_000, "col_batch_size": 10_000, "extractor": EXTRACTOR, "n_samples": n,
            "context": "model m, sampler s, K=4"}


def run_step(tmp_path: Path, shards: list[Path], reference: Path, n: int) -> dict:
    out = tmp_path / "precision_recall.json"
    args = ["precision-recall", "--spec", json.dumps(pr_spec(n)), "--features", *map(str, shards),
            "--reference", str(reference), "--out", str(out)]
    assert main(args) == 0
    return json.loads(out.read_text())


def test_the_step_scores_the_merged_shards_against_the_reference_features(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rng = np.random.default_rng(3)
    smp, ref = grid_features(rng, 50, 32), grid_features(rng, 40, 32, loc=0.5)
    shards = [write_shard(tmp_path / "a.npz", smp[:20], 0), write_shard(tmp_path / "b.npz", smp[20:], 20)]
    record = run_step(tmp_path, shards, reference_file(tmp_path / "ref.npz", ref), 50)
    jsonschema.validate(record, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/precision_recall"})
    assert (record["precision"], record["recall"]) == precision_recall(ref, smp)
    assert (record["n"], record["reference_n"], record["reference_split_size"], record["k"]) == (50, 40, 120, 3)
    assert record["reference_features_sha256"] == ReferenceFeatures.load(tmp_path / "ref.npz").content_hash()
    assert record["gemm_device"] == "cpu" and record["nfe"] == 4


def test_the_step_passes_a_failed_shard_on_and_refuses_another_extractor(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rng = np.random.default_rng(4)
    ref = reference_file(tmp_path / "ref.npz", grid_features(rng, 10, 8))
    failed = save_failed_shard(tmp_path / "f.npz", "samples turned non-finite")
    assert run_step(tmp_path, [failed], ref, 10) == {"status": "failed", "error": "samples turned non-finite"}
    other = write_shard(tmp_path / "o.npz", grid_features(rng, 10, 8), 0, extractor="inception_v3/x/y")
    with pytest.raises(SystemExit, match="features from 'inception_v3/x/y', reference features from 'digits_cnn/"):
        run_step(tmp_path, [other], ref, 10)
    with pytest.raises(SystemExit, match="shards hold 10 samples \\(10 distinct seeds\\), expected exactly 12"):
        run_step(tmp_path, [write_shard(tmp_path / "s.npz", grid_features(rng, 10, 8), 0)], ref, 12)


def test_reference_images_are_a_seeded_subset_drawn_once(tmp_path, monkeypatch):
    picked = reference_indices(100, 10, seed=7)
    assert len(set(picked.tolist())) == 10 and list(picked) == sorted(picked) and picked.max() < 100
    assert np.array_equal(picked, reference_indices(100, 10, seed=7))
    assert not np.array_equal(picked, reference_indices(100, 10, seed=8))
    assert np.array_equal(reference_indices(5, 10, seed=7), np.arange(5))

    def mean_level(extractor, weights, images, max_level):  # a stand-in extractor: one feature per image
        return images.reshape(len(images), -1).mean(axis=1, keepdims=True) / max_level, "logits", None

    monkeypatch.setattr("bench.metrics.extractors.extract_outputs", mean_level)
    from bench.data import load_dataset

    dataset = {"kind": "digits", "test_fraction": 0.2, "split_seed": 0}
    spec = {"dataset": dataset, "split": "train", "extractor": EXTRACTOR, "n": 50, "seed": 3}
    out = tmp_path / "ref.npz"
    assert main(["reference-features", "--spec", json.dumps(spec), "--extractor", str(tmp_path / "w.npz"),
                 "--out", str(out)]) == 0
    ref = ReferenceFeatures.load(out)
    images = load_dataset(dataset, "train")
    assert np.array_equal(ref.indices, reference_indices(len(images.images), 50, 3))
    expected = images.images[ref.indices].reshape(50, -1).mean(axis=1, keepdims=True) / images.max_level
    assert np.array_equal(ref.features, stored_features(expected))
    assert (ref.split, ref.split_size, ref.seed, ref.extractor) == ("train", len(images.images), 3, signature(EXTRACTOR))
    data = dict(np.load(out))
    data["features"] = data["features"] + np.float32(2.0**-12)
    np.savez(out, **data)
    with pytest.raises(CorruptFileError, match="do not match their recorded sha256"):
        ReferenceFeatures.load(out)


def test_collect_writes_a_precision_and_a_recall_row_beside_the_fid():
    cell = {"dataset": "imagenet64", "model": "m", "family": "iddpm", "sampler": "s", "sampler_label": "S",
            "grid": "respace", "K": 250, "seed": 0, "fd_is": "x/fd_is.json", "precision_recall": "x/pr.json"}
    fd = {"status": "ok", "fd": 3.0, "is_mean": 5.0, "n": 50, "nfe": 250, "reference_stats_sha256": "a" * 64,
          "device": "cpu", "device_seconds": 1.0, "wall_seconds": 1.0, "extractor": "inception_v3/torch-fidelity/x"}
    pr = {"status": "ok", "precision": 0.8, "recall": 0.7, "n": 50, "nfe": 250, "reference_features_sha256": "b" * 64,
          "devices": ["cpu"], "device_seconds": 2.0, "wall_seconds": 2.5}
    rows = {r["metric"]: r for r in collect.metric_rows(cell, {"fd_is": fd, "precision_recall": pr})}
    assert set(rows) == {"fid", "is", "precision", "recall"}
    assert (rows["precision"]["value"], rows["recall"]["value"], rows["recall"]["n_samples"]) == (0.8, 0.7, 50)
    assert rows["recall"]["reference_stats_sha256"] == "b" * 64 and rows["recall"]["wall_seconds"] == 2.5
    assert all(set(r) == set(collect.COLUMNS) for r in rows.values())
    failed = collect.metric_rows(cell, {"fd_is": fd, "precision_recall": {"status": "failed", "error": "x"}})
    assert [(r["metric"], r["status"]) for r in failed if r["metric"] in ("precision", "recall")] == [
        ("precision", "failed"), ("recall", "failed")]


# Config, plan, specs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)


def test_the_paper_profile_scores_iddpms_conditional_imagenet_cell(paper):
    assert precision_recall_cells(paper, ROOT) == [Cell("iddpm_imagenet64_cond", "iddpm_respaced", 250)]
    assert paper["metrics"]["precision_recall"] == {"reference_split": "train", "reference_n": 10_000,
                                                    "reference_seed": 0, "k": 3}


def test_a_precision_table_without_its_metric_settings_is_refused():
    cfg = read_yaml(ROOT / "workflows/config/paper.yaml")
    del cfg["metrics"]["precision_recall"]
    with pytest.raises(ConfigError, match="paper_iddpm_imagenet64_cond_precision.yaml: a precision / recall table "
                                          "needs the config key 'metrics.precision_recall'"):
        validate_config(copy.deepcopy(cfg), root=ROOT, check_paths=False)
    cfg = read_yaml(ROOT / "workflows/config/paper.yaml")
    cfg["metrics"]["precision_recall"]["k"] = 0
    with pytest.raises(ConfigError, match="metrics.precision_recall.k"):
        validate_config(cfg, root=ROOT, check_paths=False)


def test_plan_counts_one_precision_recall_job_on_the_fid_cells_samples(paper):
    from bench.steps.plan import plan

    rows = {r["table"]: r for r in plan(paper, root=ROOT)}
    fid = rows["paper_iddpm_imagenet64_cond"]
    for name in ("paper_iddpm_imagenet64_cond_precision", "paper_iddpm_imagenet64_cond_recall"):
        assert {k: rows[name][k] for k in ("cells", "unavailable", "jobs", "samples", "nfe")} == {
            k: fid[k] for k in ("cells", "unavailable", "jobs", "samples", "nfe")}
    without = copy.deepcopy(paper)
    without["tables"] = [t for t in paper["tables"] if "_cond_precision" not in t and "_cond_recall" not in t]
    # the cell's precision_recall job and the training split's reference features: two jobs more
    assert rows["total"]["jobs"] == {r["table"]: r for r in plan(without, root=ROOT)}["total"]["jobs"] + 2


def test_precision_and_recall_tables_are_higher_is_better(tmp_path):
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_iddpm_imagenet64_cond_recall.yaml").read_text())
    assert spec["better"] == "higher" and "unavailable" not in spec["rows"][0]
    path = tmp_path / "recall.yaml"
    path.write_text(yaml.safe_dump({**spec, "better": "lower"}, allow_unicode=True))
    with pytest.raises(TableSpecError, match="'lower' contradicts metric 'recall'"):
        load_table_spec(path)
