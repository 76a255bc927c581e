"""The paper profile's datasets, each read from a tiny fake copy in its official layout."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.data import DATA_SHAPES, check_dataset, load_dataset
from bench.data.layout import DatasetLayoutError
from bench.runtime.torchvision_compat import import_torchvision


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    """CIFAR-10's python layout (pickled dicts of data N x 3072 and labels), with torchvision's md5s patched to match."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels}, handle)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    cls = import_torchvision().datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})
    return tmp_path, batches


def test_cifar10_splits_follow_the_pickled_batches(cifar10):
    root, batches = cifar10
    spec = {"kind": "cifar10", "root": str(root)}
    test = load_dataset(spec, "test")
    data, labels = batches["test_batch"]
    assert test.images.shape == (4, *DATA_SHAPES["cifar10"][0]) and test.max_level == 255
    # Rows are the R, G and B planes of 32 x 32 in turn.
    assert np.array_equal(test.images, data.reshape(4, 3, 32, 32)) and test.labels.tolist() == labels
    assert check_dataset(spec) == {"train": 20, "test": 4}


def test_cifar10_with_a_changed_file_fails_with_path_and_layout(cifar10):
    root, _ = cifar10
    (root / "cifar-10-batches-py/test_batch").write_bytes(b"truncated")
    with pytest.raises(DatasetLayoutError, match=r"cifar-10-batches-py is missing or fails torchvision's md5 check"):
        check_dataset({"kind": "cifar10", "root": str(root)})


def test_celeba64_uses_ddim_crop_box_then_resizes_to_64(tmp_path):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    # An aligned 178 x 218 image: red inside DDIM's crop box (rows 57..184, columns 25..152), blue elsewhere.
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[57:185, 25:153] = (255, 0, 0)
    names = ["000001.png", "000002.png", "000003.png"]
    for name in names:
        Image.fromarray(pixels).save(folder / name)
    (tmp_path / "list_eval_partition.txt").write_text("000001.png 0\n000002.png 0\n000003.png 2\n")
    spec = {"kind": "celeba64", "root": str(tmp_path)}
    train = load_dataset(spec, "train")
    assert train.images.shape == (2, 3, 64, 64)
    assert (train.images[:, 0] == 255).all() and (train.images[:, 1:] == 0).all()
    assert check_dataset(spec) == {"train": 2, "valid": 0, "test": 1}
    (folder / "000003.png").unlink()
    with pytest.raises(DatasetLayoutError, match=f"expected a file at {folder / '000003.png'}; expected layout: "):
        check_dataset(spec)


def test_imagenet64_reads_the_npz_batches_plane_by_plane(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        np.savez(tmp_path / name, data=rng.integers(0, 256, (2, 12288), dtype=np.uint8),
                 labels=np.array([1, 1000]), mean=np.zeros(12288))
    spec = {"kind": "imagenet64", "root": str(tmp_path)}
    test = load_dataset(spec, "test")
    raw = np.load(tmp_path / "val_data.npz")["data"]
    assert np.array_equal(test.images[:, 1], raw[:, 4096:8192].reshape(2, 64, 64))
    assert test.labels.tolist() == [0, 999]
    assert check_dataset(spec) == {"train": 20, "test": 2}
    np.savez(tmp_path / "val_data.npz", data=raw[:, :100], labels=np.array([1, 2]))
    with pytest.raises(DatasetLayoutError, match=r"val_data.npz 'data' is uint8 \[2, 100\], expected uint8 \[N, 12288\]"):
        check_dataset(spec)


def test_lsun_reads_exported_images_resized_and_centre_cropped(tmp_path):
    for split in ("train", "val"):
        nested = tmp_path / f"church_outdoor_{split}" / "a" / "b"
        nested.mkdir(parents=True)
        # 300 wide x 400 high: resize to 256 x 341, then the centre 256 rows (42..297) are kept.
        pixels = np.zeros((400, 300, 3), dtype=np.uint8)
        pixels[:, :, 1] = 200
        pixels[:40] = 0
        Image.fromarray(pixels).save(nested / "x.webp", lossless=True)
    spec = {"kind": "lsun", "root": str(tmp_path), "category": "church_outdoor"}
    train = load_dataset(spec, "train")
    assert train.images.shape == (1, 3, 256, 256)
    assert (train.images[0, 1] == 200).all()
    assert check_dataset(spec) == {"train": 1, "test": 1}


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"kind": "cifar10"}, "cifar-10-batches-py"),
        ({"kind": "celeba64"}, "list_eval_partition.txt"),
        ({"kind": "imagenet64"}, "train_data_batch_1.npz"),
        ({"kind": "lsun", "category": "bedroom"}, "bedroom_train"),
    ],
)
def test_the_check_data_step_names_the_missing_path_and_the_layout(tmp_path, spec, path):
    spec = {**spec, "root": str(tmp_path / "nowhere")}
    out = tmp_path / "check.json"
    with pytest.raises(DatasetLayoutError) as err:
        main(["check-data", "--spec", json.dumps(spec), "--out", str(out)])
    assert str(tmp_path / "nowhere") in str(err.value) and path in str(err.value)
    assert "expected layout" in str(err.value)
    assert not out.exists()
