"""FD and IS: closed forms, exact merging of statistics, and agreement of the backends."""

import numpy as np
import pytest
import torch

from bench.data.digits import levels_to_unit, load_digits_split
from bench.metrics.classifier import save_classifier, train_classifier
from bench.metrics.feature_stats import (
    FeatureStats,
    fd_from_stats,
    frechet_distance,
    frechet_distance_cleanfid,
    inception_score,
)
from bench.metrics.fid_is import compute_fd_is
from bench.runtime.io import CorruptFileError

# ---------------------------------------------------------------------------------------------
# Closed forms


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_frechet_distance_of_rotated_isotropic_and_identical_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # For sigma2 = c^2 sigma1 the square root is c sigma1: FD = (1 - c)^2 tr(sigma1).
    assert frechet_distance(mu, sigma, mu, 4.0 * sigma) == pytest.approx(np.trace(sigma), rel=1e-10)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"covariances must be \[3, 3\].*got \[2, 2\]"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"means must be vectors of equal length, got \[3\] and"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))


def test_inception_score_closed_forms():
    n, classes = 1000, 10
    confident = np.full((n, classes), -40.0)
    confident[np.arange(n), np.arange(n) % classes] = 40.0
    # Each unshuffled split of 100 holds 10 confident predictions of every class: IS = 10.
    mean, std = inception_score(confident, splits=10, shuffle_seed=None)
    assert mean == pytest.approx(10.0, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)
    # Identical predictions: p(y|x) = p(y), so every KL is zero and IS = 1.
    same = np.tile(np.random.default_rng(0).normal(size=classes), (n, 1))
    assert inception_score(same, splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)
    # Two equally likely classes, each image certain: IS = 2 per split.
    two = np.full((8, 3), -50.0)
    two[:, 0][::2] = 50.0
    two[:, 1][1::2] = 50.0
    assert inception_score(two, splits=1)[0] == pytest.approx(2.0, rel=1e-12)


def test_inception_score_rejects_bad_splits():
    with pytest.raises(ValueError, match=r"splits must lie in 1..4 \(the number of samples\), got 5"):
        inception_score(np.zeros((4, 10)), splits=5)


# ---------------------------------------------------------------------------------------------
# FeatureStats


def test_merged_shards_equal_stats_of_the_whole():
    x = np.random.default_rng(2).normal(loc=3.0, size=(1000, 7))
    whole = FeatureStats.from_features(x)
    merged = FeatureStats.from_features(x[:1])
    for start, stop in [(1, 300), (300, 301), (301, 1000)]:
        merged = merged.merge(FeatureStats.from_features(x[start:stop]))
    assert merged.n == 1000
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-12)
    np.testing.assert_allclose(merged.sum_outer, whole.sum_outer, rtol=1e-12)
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_feature_stats_errors():
    with pytest.raises(ValueError, match="cannot merge FeatureStats of dimension 3 and 2"):
        FeatureStats.from_features(np.zeros((4, 3))).merge(FeatureStats.from_features(np.zeros((4, 2))))
    with pytest.raises(ValueError, match="covariance of FeatureStats needs n >= 2, got n = 1"):
        _ = FeatureStats.from_features(np.zeros((1, 3))).cov


def test_feature_stats_save_load_and_hash(tmp_path):
    stats = FeatureStats.from_features(np.random.default_rng(3).normal(size=(50, 4)))
    path = tmp_path / "stats.npz"
    stats.save(path)
    with np.load(path) as data:
        assert str(data["sha256"]) == stats.content_hash()
    loaded = FeatureStats.load(path)
    assert loaded.n == 50 and loaded.content_hash() == stats.content_hash()
    np.testing.assert_array_equal(loaded.sum_outer, stats.sum_outer)
    # Any change to the arrays without updating the hash is detected.
    with np.load(path) as data:
        tampered = {k: data[k] for k in data.files}
    tampered["sum"] = tampered["sum"] + 1e-9
    np.savez(path, **tampered)
    with pytest.raises(CorruptFileError, match="does not match the recorded sha256"):
        FeatureStats.load(path)


# ---------------------------------------------------------------------------------------------
# With the trained digits classifier


@pytest.fixture(scope="module")
def digits():
    return load_digits_split("train"), load_digits_split("test")


@pytest.fixture(scope="module")
def classifier(digits):
    torch.set_num_threads(1)
    return train_classifier(digits[0], seed=0)


@pytest.fixture(scope="module")
def classifier_path(classifier, tmp_path_factory):
    return save_classifier(classifier, tmp_path_factory.mktemp("clf") / "digits_cnn.npz")


@torch.no_grad()
def extract(images, max_level, classifier):
    """Features and logits (float64) of the torch network itself, the loop torch-fidelity's is checked against."""
    x = torch.from_numpy(levels_to_unit(images, max_level))
    h = classifier.features(x)
    return h.double().numpy(), classifier.head(h).double().numpy()


def _stats(images, classifier):
    return FeatureStats.from_features(extract(images, 16, classifier)[0])


def test_fd_separates_digit_halves(digits, classifier):
    train, test = digits
    same = fd_from_stats(_stats(test.images, classifier), _stats(train.images, classifier))
    low, high = train.images[train.labels < 5], train.images[train.labels >= 5]
    different = fd_from_stats(_stats(low, classifier), _stats(high, classifier))
    assert different > 20.0 * same


def test_torch_fidelity_agrees_with_own_loop(digits, classifier, classifier_path):
    train, test = digits
    result = compute_fd_is(test.images, 16, train.images, classifier_path, batch_size=100)
    assert result["n"] == len(test.images)
    assert result["backend"] == "torch-fidelity" and result["backend_version"] == "0.4.0"
    features, logits = extract(test.images, 16, classifier)
    own_fd = fd_from_stats(FeatureStats.from_features(features), _stats(train.images, classifier))
    assert result["fd"] == pytest.approx(own_fd, rel=1e-6, abs=1e-6)
    is_mean, is_std = inception_score(logits, splits=10)
    assert result["is_mean"] == pytest.approx(is_mean, rel=1e-9)
    assert result["is_std"] == pytest.approx(is_std, rel=1e-9, abs=1e-12)
    # Real digits are classified confidently and evenly: IS near the 10 classes.
    assert 7.0 < is_mean <= 10.0


def test_sharded_statistics_give_the_same_fd(digits, classifier):
    train, test = digits
    whole = _stats(test.images, classifier)
    shards = [_stats(test.images[a : a + 100], classifier) for a in range(0, len(test.images), 100)]
    merged = shards[0]
    for shard in shards[1:]:
        merged = merged.merge(shard)
    reference = _stats(train.images, classifier)
    assert fd_from_stats(merged, reference) == pytest.approx(fd_from_stats(whole, reference), rel=1e-9)


def test_clean_fid_agrees_on_the_same_statistics(digits, classifier):
    pytest.importorskip("cleanfid")
    train, test = digits
    a, b = _stats(test.images, classifier), _stats(train.images[train.labels < 5], classifier)
    ours = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    theirs = frechet_distance_cleanfid(a.mean, a.cov, b.mean, b.cov)
    assert theirs == pytest.approx(ours, rel=1e-6, abs=1e-6)


def test_compute_fd_is_rejects_bad_images(digits, classifier_path):
    train, test = digits
    with pytest.raises(ValueError, match="images must be a uint8 numpy array of levels, got float32"):
        compute_fd_is(test.images.astype(np.float32), 16, train.images, classifier_path)
    with pytest.raises(ValueError, match="reference_images hold level 16, above max_level 8"):
        compute_fd_is(test.images // 2, 8, train.images, classifier_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_fd_is(test.images, 16, train.images, classifier_path.with_name("missing.pt"))
