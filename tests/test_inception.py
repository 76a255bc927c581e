"""Inception FID / IS through torch-fidelity and clean-fid from local random-weight files, offline.

Each backend's own entry point (torch_fidelity.calculate_metrics, cleanfid.fid.compute_fid) runs on
two dozen random 32x32 images; our per-shard pipeline (features of 3 shards, exact sums merged)
must give the same FD and IS. Any download attempt fails the test.
"""

import urllib.request

import numpy as np
import pytest
import torch
from inception_fixtures import write_cleanfid_torchscript, write_torch_fidelity_weights
from PIL import Image

from bench.metrics.feature_stats import (
    FeatureStats,
    frechet_distance,
    frechet_distance_of_backend,
    inception_score,
    inception_score_from_probs,
)
from bench.metrics.inception import CleanFidInception, TorchFidelityInception, load_inception, resolve_mode
from bench.metrics.shard_features import exact_stats, fixed_point
from bench.runtime.torchvision_compat import import_torchvision

N_GEN, N_REF, SHARDS = 12, 12, (0, 4, 9, 12)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every way the libraries download (urllib, torch.hub) raises instead."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import_torchvision()  # torch-fidelity imports torchvision, which on CPU-only torch needs the nms shim first
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    generated = rng.integers(0, 256, size=(N_GEN, 3, 32, 32), dtype=np.uint8)
    # The reference set is brighter, so that FD is far from 0.
    reference = np.clip(rng.integers(0, 256, size=(N_REF, 3, 32, 32)) + 60, 0, 255).astype(np.uint8)
    return generated, reference


def _sharded(extractor, generated):
    """Our pipeline: features per shard, exact sums merged in seed order, IS inputs concatenated."""
    stats, is_values = None, []
    for start, stop in zip(SHARDS[:-1], SHARDS[1:], strict=True):
        out = extractor(generated[start:stop])
        part = exact_stats(out.features)
        stats = part if stats is None else stats.merge(part)
        is_values.append(out.is_values)
    return stats, out.is_kind, np.concatenate(is_values)


class _Images(torch.utils.data.Dataset):
    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        return torch.from_numpy(self.array[i].copy())


def test_torch_fidelity_backend_matches_calculate_metrics(tmp_path, images):
    import torch_fidelity

    generated, reference = images
    weights = write_torch_fidelity_weights(tmp_path / "weights-inception.pth")
    direct = torch_fidelity.calculate_metrics(
        input1=_Images(generated),
        input2=_Images(reference),
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights),
        fid=True,
        isc=True,
        isc_splits=3,
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    extractor = TorchFidelityInception(weights)
    stats, is_kind, is_values = _sharded(extractor, generated)
    ref_stats = exact_stats(extractor(reference).features)
    fd = frechet_distance_of_backend("torch-fidelity", stats, ref_stats)
    assert is_kind == "logits" and is_values.shape == (N_GEN, 1008)
    assert fd > 1e-3
    # The random network's features spread by only ~5e-3 across images (real Inception's by ~0.1-1),
    # 20 quanta of the fixed-point sums (2^-12), and torch-fidelity keeps its mean in float32.
    assert fd == pytest.approx(direct[torch_fidelity.KEY_METRIC_FID], rel=1e-3)
    is_mean, is_std = inception_score(is_values, splits=3)
    assert is_mean == pytest.approx(direct[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-9)
    assert is_std == pytest.approx(direct[torch_fidelity.KEY_METRIC_ISC_STD], rel=1e-6, abs=1e-12)


def _write_pngs(folder, array):
    folder.mkdir()
    for i, image in enumerate(array):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_clean_fid_backend_matches_compute_fid(tmp_path, images, mode):
    from cleanfid import fid as cleanfid_fid
    from cleanfid.inception_torchscript import InceptionV3W

    generated, reference = images
    weights_dir = write_cleanfid_torchscript(tmp_path / "cleanfid")
    net = InceptionV3W(str(weights_dir), download=False, resize_inside=mode == "legacy_tensorflow").eval()
    direct = cleanfid_fid.compute_fid(
        str(_write_pngs(tmp_path / "gen", generated)),
        str(_write_pngs(tmp_path / "ref", reference)),
        mode=mode,
        custom_feat_extractor=net,
        device=torch.device("cpu"),
        num_workers=0,
        batch_size=8,
        verbose=False,
        use_dataparallel=False,
    )
    extractor = CleanFidInception(weights_dir / "inception-2015-12-05.pt", mode)
    stats, is_kind, probs = _sharded(extractor, generated)
    ref_stats = exact_stats(extractor(reference).features)
    fd = frechet_distance_of_backend("clean-fid", stats, ref_stats)
    assert fd > 1e-3
    assert fd == pytest.approx(direct, rel=1e-4)
    # IS from the network's probabilities without output bias: between 1 and the number of classes.
    assert is_kind == "probs" and probs.shape == (N_GEN, 1008)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    is_mean, _ = inception_score_from_probs(probs, splits=3)
    assert 1.0 <= is_mean <= 1008


def test_backends_agree_on_the_same_feature_statistics(images):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3000, 64)) @ rng.normal(size=(64, 64))
    b = rng.normal(loc=0.3, size=(2500, 64)) @ rng.normal(size=(64, 64))
    s1, s2 = FeatureStats.from_features(a), FeatureStats.from_features(b)
    ours = frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)
    tf = frechet_distance_of_backend("torch-fidelity", s1, s2)
    cf = frechet_distance_of_backend("clean-fid", s1, s2)
    assert ours > 1.0
    assert abs(tf - cf) <= 1e-6 * max(1.0, cf)
    assert abs(ours - cf) <= 1e-6 * max(1.0, cf)


def test_inception_score_from_probs_closed_forms():
    # Each split holds every one of 4 classes with certainty: IS = 4; uniform predictions: IS = 1.
    certain = np.tile(np.eye(4), (3, 1))
    assert inception_score_from_probs(certain, splits=3) == pytest.approx((4.0, 0.0), abs=1e-12)
    assert inception_score_from_probs(np.full((6, 5), 0.2), splits=2) == pytest.approx((1.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match=r"splits must lie in 1..6 \(the number of samples\), got 7"):
        inception_score_from_probs(np.full((6, 5), 0.2), splits=7)


def test_exact_sums_do_not_depend_on_how_samples_are_split():
    x = np.random.default_rng(5).normal(scale=3.0, size=(210, 48)).astype(np.float32)
    whole = exact_stats(x)
    for bounds in ((0, 1, 77, 210), (0, 100, 101, 150, 210), tuple(range(0, 211, 30))):
        merged = None
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            part = exact_stats(x[start:stop])
            merged = part if merged is None else merged.merge(part)
        assert np.array_equal(merged.sum, whole.sum) and np.array_equal(merged.sum_outer, whole.sum_outer)
        assert merged.content_hash() == whole.content_hash()
    assert np.abs(fixed_point(x) - x).max() <= 2.0**-13


def test_fixed_point_refuses_features_outside_its_exact_range():
    with pytest.raises(ValueError, match=r"magnitude 70 is outside the exact-sum range \|x\| < 64"):
        fixed_point(np.array([[1.0, -70.0]]))


def test_bad_backend_mode_and_missing_weights_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"mode 'clean' is not allowed for backend 'torch-fidelity'; allowed: "):
        resolve_mode("torch-fidelity", "clean")
    with pytest.raises(ValueError, match=r"backend 'pytorch-fid' is not allowed; allowed: \['clean-fid', 'torch"):
        resolve_mode("pytorch-fid", None)
    assert resolve_mode("clean-fid", None) == "clean"
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_inception("torch-fidelity", None, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="clean-fid loads its TorchScript by the name inception-2015-12-05.pt"):
        load_inception("clean-fid", "clean", tmp_path / "other.pt")
