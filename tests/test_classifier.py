"""The digits CNN used as FD/IS feature extractor: accuracy, determinism, checkpoint round trip."""

import numpy as np
import pytest
import torch

from bench.data.digits import levels_to_unit, load_digits_split
from bench.metrics.classifier import (
    DigitsClassifier,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)
from bench.metrics.digits_cnn import features_and_logits, load_weights
from bench.runtime.io import CorruptFileError


@pytest.fixture(scope="module")
def train_split():
    return load_digits_split("train")


@pytest.fixture(scope="module")
def classifier(train_split):
    torch.set_num_threads(1)
    return train_classifier(train_split, seed=0)


def test_test_accuracy_at_least_95_percent(classifier):
    assert accuracy(classifier, load_digits_split("test")) >= 0.95


def test_output_shapes(classifier, train_split):
    x = torch.from_numpy(levels_to_unit(train_split.images[:5], train_split.max_level))
    assert classifier.features(x).shape == (5, classifier.config.feature_dim)
    assert classifier.logits(x).shape == (5, 10)


def test_same_seed_same_weights_other_seed_different(train_split):
    a = train_classifier(train_split, seed=3, epochs=1)
    b = train_classifier(train_split, seed=3, epochs=1)
    c = train_classifier(train_split, seed=4, epochs=1)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_training_leaves_global_rng_untouched(train_split):
    before = torch.random.get_rng_state()
    train_classifier(train_split, seed=5, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_save_load_round_trip(classifier, train_split, tmp_path):
    path = tmp_path / "sub" / "digits_cnn.npz"
    save_classifier(classifier, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits_cnn.npz"]
    loaded = load_classifier(path)
    x = torch.from_numpy(levels_to_unit(train_split.images[:32], train_split.max_level))
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), classifier.logits(x))
    assert loaded.config == classifier.config
    assert not loaded.training


def test_load_rejects_other_checkpoints(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, state_dict=np.zeros(3))
    with pytest.raises(CorruptFileError, match="not a digits classifier checkpoint: format None"):
        load_classifier(path)
    torch.save({"state_dict": {}}, tmp_path / "torch.pt")  # a zip archive too, read without unpickling
    with pytest.raises(CorruptFileError, match=r"torch\.pt is not a digits classifier checkpoint: format None"):
        load_classifier(tmp_path / "torch.pt")


def test_numpy_forward_equals_the_torch_network(classifier, train_split, tmp_path):
    """The features jobs' numpy pass (bench.metrics.digits_cnn) computes DigitsClassifier.features / .logits."""
    path = save_classifier(classifier, tmp_path / "digits_cnn.npz")
    images = train_split.images[:300]
    features, logits = features_and_logits(images, train_split.max_level, load_weights(path), batch_size=128)
    x = torch.from_numpy(levels_to_unit(images, train_split.max_level))
    with torch.no_grad():
        want_features = classifier.features(x).double().numpy()
        want_logits = classifier.logits(x).double().numpy()
    assert features.shape == (300, 64) and logits.shape == (300, 10)
    np.testing.assert_allclose(features, want_features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    # each image's outputs are its own, bit for bit, whatever shares its batch and however large it is
    alone, alone_logits = features_and_logits(images[7:8], train_split.max_level, load_weights(path))
    np.testing.assert_array_equal(alone[0], features[7])
    np.testing.assert_array_equal(alone_logits[0], logits[7])
    for size in (1, 7, 300):
        other, other_logits = features_and_logits(images, train_split.max_level, load_weights(path), batch_size=size)
        np.testing.assert_array_equal(other, features)
        np.testing.assert_array_equal(other_logits, logits)


def test_bad_input_and_arguments_are_named(train_split):
    net = DigitsClassifier()
    with pytest.raises(ValueError, match=r"shape \[N, 1, 8, 8\], got \[2, 3, 8, 8\]"):
        net.features(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="must be float in \\[-1, 1\\], got dtype torch.uint8"):
        net.features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_classifier(train_split, seed=0, epochs=0)
