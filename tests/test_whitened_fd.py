"""The whitened FD bootstrap (bench.metrics.whitened_fd) against the backends' per-resample formulas:
the same FD of every resample and the same interval, on well- and ill-conditioned and rank-deficient
references; the feature-count threshold that picks it, and what fd_is.json records of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.metrics.bootstrap import (
    FD_BY_BACKEND,
    FD_WHITENED,
    WHITENED_MIN_FEATURES,
    BootstrapSpec,
    cell_fd_interval,
    fd_interval,
    fd_interval_whitened,
    resample_indices,
)
from bench.metrics.feature_stats import FeatureStats, fd_from_stats, frechet_distance_of_backend
from bench.metrics.shard_features import ShardFeatures, exact_stats, fixed_point, stored_features
from bench.metrics.whitened_fd import WhitenedFD, psd_root
from bench.runtime.device import device_label, select_device

CPU = torch.device("cpu")


def job_device() -> str:
    """Where the whitened path of a job runs here: the claimed GPU, else the CPU."""
    return device_label(select_device())


def cell_features(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Correlated features with a mean away from the origin (the centring matters)."""
    return fixed_point(rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) * 0.3 + 1.0)


def reference_stats(rng: np.random.Generator, dim: int, kind: str) -> FeatureStats:
    if kind == "rank-deficient":  # fewer reference samples than features: Sigma_r has rank 59
        return FeatureStats.from_features(rng.standard_normal((60, dim)) + 0.5)
    a = rng.standard_normal((1000, dim))
    if kind == "ill-conditioned":  # column scales 1 .. 1e-4: eigenvalues of Sigma_r span 8 decades
        a = a * np.logspace(0, -4, dim)
    return FeatureStats.from_features(a + 0.5)


def test_psd_root_squares_back_and_clamps_round_off_negatives() -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    cov = (q * np.array([4.0, 1.0, 0.0, -1e-15])) @ q.T
    root = psd_root(torch.as_tensor(cov)).numpy()
    assert np.allclose(root, root.T, atol=1e-15)
    assert np.linalg.eigvalsh(root) == pytest.approx([0.0, 0.0, 1.0, 2.0], abs=1e-7)
    assert root @ root == pytest.approx((q * np.array([4.0, 1.0, 0.0, 0.0])) @ q.T, abs=1e-14)


CASES = [(32, "well-conditioned"), (128, "ill-conditioned"), (128, "rank-deficient")]


@pytest.mark.parametrize(("dim", "kind"), CASES)
def test_every_resample_has_the_fd_of_the_resampled_features(dim: int, kind: str) -> None:
    rng = np.random.default_rng(dim)
    x = cell_features(rng, 300, dim)
    reference = reference_stats(rng, dim, kind)
    spec = BootstrapSpec(resamples=12, seed=5)
    rows = resample_indices(len(x), spec)
    direct = np.array([fd_from_stats(FeatureStats.from_features(x[r]), reference) for r in rows])
    counts = np.stack([np.bincount(r, minlength=len(x)) for r in rows])
    assert WhitenedFD(x, reference, CPU)(counts) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize(("dim", "kind"), CASES)
def test_the_whitened_interval_is_the_backend_formulas_interval(dim: int, kind: str) -> None:
    rng = np.random.default_rng(dim + 1)
    x = cell_features(rng, 300, dim)
    reference = reference_stats(rng, dim, kind)
    spec = BootstrapSpec(resamples=12, seed=9, level=0.8)
    expected = fd_interval(x, reference, fd_from_stats, spec)
    assert fd_interval_whitened(x, reference, spec, CPU) == pytest.approx(expected, rel=1e-8)


def test_the_whitened_fd_is_torch_fidelitys_formula() -> None:
    """torch-fidelity (the paper profile's backend) takes the real part of the square roots of eig(Sigma_g Sigma_r)."""
    rng = np.random.default_rng(4)
    x = cell_features(rng, 200, 48)
    reference = reference_stats(rng, 48, "ill-conditioned")
    rows = resample_indices(len(x), BootstrapSpec(resamples=4, seed=1))
    fidelity = [frechet_distance_of_backend("torch-fidelity", FeatureStats.from_features(x[r]), reference)
                for r in rows]
    counts = np.stack([np.bincount(r, minlength=len(x)) for r in rows])
    assert WhitenedFD(x, reference, CPU)(counts) == pytest.approx(fidelity, rel=1e-8)


def test_bad_shapes_are_refused_with_their_shapes() -> None:
    reference = FeatureStats.from_features(np.random.default_rng(0).standard_normal((20, 4)))
    with pytest.raises(ValueError, match=r"features must be \[N, 4\] to match the reference, got \[10, 3\]"):
        WhitenedFD(np.zeros((10, 3)), reference, CPU)
    fd = WhitenedFD(np.random.default_rng(1).standard_normal((10, 4)), reference, CPU)
    with pytest.raises(ValueError, match=r"counts must be \[B, 10\], got \[2, 9\]"):
        fd(np.ones((2, 9)))


@pytest.mark.parametrize(("dim", "method"), [(WHITENED_MIN_FEATURES - 1, FD_BY_BACKEND),
                                             (WHITENED_MIN_FEATURES, FD_WHITENED)])
def test_the_feature_count_picks_the_method(dim: int, method: str) -> None:
    rng = np.random.default_rng(2)
    x = cell_features(rng, 150, dim)
    reference = reference_stats(rng, dim, "well-conditioned")
    spec = BootstrapSpec(resamples=4, seed=3)
    interval, how = cell_fd_interval(x, reference, fd_from_stats, spec, threads=1)
    assert how == {"fd_method": method, "fd_device": "cpu" if method == FD_BY_BACKEND else job_device()}
    backend = fd_interval(x, reference, fd_from_stats, spec)
    if method == FD_BY_BACKEND:
        assert interval == backend  # the embedded default's 64 features: the backend's formula, bit for bit
    else:
        assert interval == pytest.approx(backend, rel=1e-8)


def test_fd_is_records_how_a_wide_cells_interval_was_computed(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    dim, n = WHITENED_MIN_FEATURES, 40
    x = cell_features(rng, n, dim)
    paths = []
    for i, part in enumerate((x[:25], x[25:])):
        first = 0 if i == 0 else 25
        paths.append(str(ShardFeatures(
            stats=exact_stats(part), is_kind="logits", is_values=rng.standard_normal((len(part), 3)),
            seeds=np.arange(first, first + len(part)), extractor="digits_cnn/dpm-bench/native", nfe=2,
            grid=np.array([0, 1]), sample_wall_seconds=0.0, feature_wall_seconds=0.0, sample_device_seconds=0.0,
            feature_device_seconds=0.0, devices=("cpu",), speeds=("{}",), features=stored_features(part),
        ).save(tmp_path / f"shard{i}.npz")))
    reference = reference_stats(rng, dim, "well-conditioned")
    reference.save(tmp_path / "ref.npz")
    (tmp_path / "ref.json").write_text(json.dumps({"extractor": "digits_cnn/dpm-bench/native", "reference": "train",
                                                   "n_images": reference.n,
                                                   "reference_stats_sha256": reference.content_hash()}))
    boot = {"resamples": 6, "seed": 2}
    spec = {"extractor": {"kind": "digits_cnn"}, "n_samples": n, "is_splits": 2, "bootstrap": boot, "context": "c"}
    out = tmp_path / "fd_is.json"
    assert main(["fd-is", "--spec", json.dumps(spec), "--features", *paths, "--reference", str(tmp_path / "ref.npz"),
                 "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["bootstrap"]["fd_method"] == FD_WHITENED and record["bootstrap"]["fd_device"] == job_device()
    expected = fd_interval(x, reference, fd_from_stats, BootstrapSpec(**boot))
    assert record["fd_ci"] == pytest.approx(expected, rel=1e-8)
