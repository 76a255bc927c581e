"""Published FID reference statistics: the registry, verified downloads from 127.0.0.1, loading into FeatureStats."""

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_download import site  # noqa: F401  (the local HTTP server fixture)

from bench.checkpoints.download import ChecksumMismatch
from bench.checkpoints.references import (
    ReferenceError,
    default_weights,
    fetch_weights,
    load_references,
    statistics_entry,
)
from bench.data import DATA_SHAPES
from bench.metrics.reference_stats import fetch_statistics, published_stats
from bench.runtime.io import CorruptFileError

ROOT = Path(__file__).resolve().parents[1]
DIM = 2048


def _moments(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(DIM, 64)) * 0.1
    return rng.uniform(0, 1, size=DIM), a @ a.T + 0.01 * np.eye(DIM)


def _npz(fmt: str, mu: np.ndarray, sigma: np.ndarray) -> bytes:
    """Bytes of an npz as each publisher writes it: EDM np.savez; clean-fid and TTUR np.savez_compressed."""
    buffer = io.BytesIO()
    if fmt == "edm":
        np.savez(buffer, mu=mu, sigma=sigma)
    else:
        np.savez_compressed(buffer, mu=mu.astype(np.float32) if fmt == "ttur" else mu, sigma=sigma)
    return buffer.getvalue()


def test_registry_is_valid_and_every_entry_is_pinned_or_hashed():
    refs = load_references()
    assert {e.backend for e in refs.weights.values()} == {"torch-fidelity", "clean-fid"}
    assert default_weights("torch-fidelity").sha256_prefix == "6726825d"
    assert default_weights("torch-fidelity").file.endswith("-6726825d.pth")
    for entry in refs.statistics.values():
        assert entry.hash_type == "none" and entry.hash is None  # nothing publishes a full hash
        assert entry.url.endswith(".npz") and entry.n_images >= 2
    assert (
        statistics_entry("edm_cifar10_32x32").url == "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
    )
    with pytest.raises(ReferenceError, match=r"unknown reference statistics 'cifar10'; known: \["):
        statistics_entry("cifar10")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("edm_cifar10_32x32", "edm"),
        ("edm_ffhq_64x64", "edm"),
        ("edm_afhqv2_64x64", "edm"),
        ("cleanfid_cifar10_clean_train_32", "cleanfid"),
        ("ttur_cifar10_train", "ttur"),
    ],
)
def test_published_statistics_are_fetched_pinned_and_loaded(site, tmp_path, name, fmt):  # noqa: F811
    mu, sigma = _moments(1)
    body = _npz(fmt, mu, sigma)
    entry = replace(statistics_entry(name), url=site.add(f"/{name}.npz", body))
    lock = tmp_path / "lock.json"
    stats, digest = fetch_statistics(entry, tmp_path / "cache", lock)
    assert stats.n == entry.n_images
    expected_mu = mu.astype(np.float32).astype(np.float64) if fmt == "ttur" else mu
    np.testing.assert_allclose(stats.mean, expected_mu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.cov, sigma, rtol=1e-9, atol=1e-12)
    assert json.loads(lock.read_text()) == {entry.url: digest}
    # Second call: verified against the pin, not fetched again.
    assert fetch_statistics(entry, tmp_path / "cache", lock)[1] == digest
    assert len(site.requests) == 1
    # A changed file on the server is caught by the pin.
    (tmp_path / "cache" / name / f"{name}.npz").unlink()
    site.files[f"/{name}.npz"] = _npz(fmt, *_moments(2))
    with pytest.raises(ChecksumMismatch):
        fetch_statistics(entry, tmp_path / "cache", lock)


@pytest.mark.parametrize(("name", "kind", "stem"), [("edm_ffhq_64x64", "ffhq64", "ffhq-64x64"),
                                                   ("edm_afhqv2_64x64", "afhqv2_64", "afhqv2-64x64")])
def test_edm_64x64_statistics_are_the_published_fid_refs_of_the_dataset_kinds(name, kind, stem):
    entry = statistics_entry(name)
    assert entry.url == f"https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/{stem}.npz"
    assert (entry.dataset, entry.split, entry.format, entry.mode) == (kind, "train", "edm", "legacy_tensorflow")


def test_every_statistics_entry_names_a_dataset_kind_of_its_resolution():
    for entry in load_references().statistics.values():
        assert entry.dataset in DATA_SHAPES, entry.name
        assert DATA_SHAPES[entry.dataset][0][1:] == (entry.resolution, entry.resolution), entry.name


def test_statistics_of_the_wrong_shape_or_keys_are_refused(tmp_path):
    entry = statistics_entry("edm_cifar10_32x32")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(
        CorruptFileError, match=r"expected mu \[2048\] and sigma \[2048, 2048\], got \[64\] and \[64, 64\]"
    ):
        published_stats(bad, entry)
    np.savez(bad, m=np.zeros(DIM), s=np.eye(DIM))
    with pytest.raises(CorruptFileError, match=r"lacks arrays \['mu', 'sigma'\]"):
        published_stats(bad, entry)


def test_weights_prefix_is_checked_after_download(site, tmp_path):  # noqa: F811
    entry = default_weights("torch-fidelity")
    entry = replace(entry, url=site.add("/weights.pth", b"not the inception weights"))
    with pytest.raises(ReferenceError, match="does not start with the published prefix 6726825d"):
        fetch_weights(entry, tmp_path / "cache", tmp_path / "lock.json")


def test_reference_stats_step_refuses_statistics_of_another_mode(tmp_path):
    spec = {
        "extractor": {"kind": "inception_v3", "backend": "clean-fid", "mode": "clean"},
        "reference": "edm_cifar10_32x32",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "reference-stats",
            "--spec",
            json.dumps(spec),
            "--out",
            str(tmp_path / "r.npz"),
            "--cache",
            str(tmp_path / "cache"),
            "--lock",
            str(tmp_path / "lock.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "'edm_cifar10_32x32' were made in mode 'legacy_tensorflow'; the extractor runs in mode 'clean'" in r.stderr
    assert not (tmp_path / "cache").exists()
