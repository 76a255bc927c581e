"""FFHQ 64 / AFHQv2 64 read from fake copies in the layout EDM's dataset_tool.py writes (zip and folder)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.data import DATA_SHAPES, check_dataset, load_dataset
from bench.data.layout import DatasetLayoutError

STEMS = {"ffhq64": "ffhq-64x64", "afhqv2_64": "afhqv2-64x64"}


def archive_name(idx: int) -> str:
    """dataset_tool.py L398-399."""
    idx_str = f"{idx:08d}"
    return f"{idx_str[:5]}/img{idx_str}.png"


def png(pixels: np.ndarray) -> bytes:
    """An uncompressed PNG as dataset_tool.py L425-427 saves it."""
    mode = {2: "L", 3: "RGB"}[pixels.ndim] if pixels.ndim == 2 or pixels.shape[2] == 3 else "RGBA"
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="png", compress_level=0, optimize=False)
    return buffer.getvalue()


def write_dataset(dest: Path, files: dict[str, bytes], metadata: dict | None) -> None:
    """A zip (ZIP_STORED, dataset_tool.py L284) or a folder, members written in the given order."""
    if metadata is not None:
        files = {**files, "dataset.json": json.dumps(metadata).encode()}
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, mode="w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return
    for name, data in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)


def images(n: int, seed: int = 0, shape=(64, 64, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


@pytest.fixture(params=["zip", "folder"])
def form(request):
    return request.param


def dest_for(root: Path, kind: str, form: str) -> Path:
    return root / (f"{STEMS[kind]}.zip" if form == "zip" else STEMS[kind])


@pytest.mark.parametrize("kind", sorted(STEMS))
def test_images_come_back_in_edm_order_as_chw_uint8_with_labels(tmp_path, kind, form):
    # Indices 0, 1, 2 and 100000 (folder 00001/), written in scrambled order: EDM sorts the names.
    indices = [100000, 2, 0, 1]
    pixels = dict(zip(indices, images(4), strict=True))
    labels = {0: 2, 1: 0, 2: 1, 100000: 2}
    write_dataset(
        dest_for(tmp_path, kind, form),
        {archive_name(i): png(pixels[i]) for i in indices},
        {"labels": [[archive_name(i), labels[i]] for i in indices]},
    )
    spec = {"kind": kind, "root": str(tmp_path)}
    train = load_dataset(spec, "train")
    order = [0, 1, 2, 100000]
    assert train.images.shape == (4, *DATA_SHAPES[kind][0]) and train.images.dtype == np.uint8
    assert all(np.array_equal(train.images[k], pixels[i].transpose(2, 0, 1)) for k, i in enumerate(order))
    assert train.labels.tolist() == [labels[i] for i in order] and train.labels.dtype == np.int64
    assert train.max_level == 255
    assert check_dataset(spec) == {"train": 4}
    first = load_dataset({**spec, "max_images": 2}, "train")
    assert np.array_equal(first.images, train.images[:2]) and first.labels.tolist() == [2, 0]


@pytest.mark.parametrize("metadata", [None, {"labels": None}])
def test_unlabelled_dataset_with_or_without_dataset_json(tmp_path, form, metadata):
    write_dataset(dest_for(tmp_path, "ffhq64", form), {archive_name(0): png(images(1)[0])}, metadata)
    spec = {"kind": "ffhq64", "root": str(tmp_path)}
    assert check_dataset(spec) == {"train": 1}
    assert load_dataset(spec, "train").labels.tolist() == [0]


def test_vector_labels_are_float32_rows(tmp_path):
    write_dataset(
        tmp_path / "afhqv2-64x64.zip",
        {archive_name(0): png(images(1)[0])},
        {"labels": [[archive_name(0), [0.5, 1.0]]]},
    )
    labels = load_dataset({"kind": "afhqv2_64", "root": str(tmp_path)}, "train").labels
    assert labels.dtype == np.float32 and labels.tolist() == [[0.5, 1.0]]


@pytest.mark.parametrize(
    ("shape", "found"), [((32, 32, 3), "32x32x3"), ((64, 48, 3), "48x64x3"), ((64, 64), "64x64x1"), ((64, 64, 4), "64x64x4")]
)
def test_wrong_size_or_channels_names_the_file_and_both_sizes(tmp_path, form, shape, found):
    dest = dest_for(tmp_path, "ffhq64", form)
    bad = images(1, shape=shape)[0]
    write_dataset(dest, {archive_name(0): png(images(1)[0]), archive_name(1): png(bad)}, {"labels": None})
    where = f"{dest}:{archive_name(1)}" if form == "zip" else str(dest / archive_name(1))
    message = re.escape(f"dataset ffhq64: {where} is {found} (width x height x channels), expected 64x64x3")
    with pytest.raises(DatasetLayoutError, match=message):
        check_dataset({"kind": "ffhq64", "root": str(tmp_path)})
    with pytest.raises(DatasetLayoutError, match=message):
        load_dataset({"kind": "ffhq64", "root": str(tmp_path)}, "train")


def test_dataset_json_naming_a_missing_image_is_refused(tmp_path, form):
    dest = dest_for(tmp_path, "afhqv2_64", form)
    entries = [[archive_name(0), 0], [archive_name(1), 1], [archive_name(2), 1]]
    write_dataset(dest, {archive_name(0): png(images(1)[0]), archive_name(2): png(images(1)[0])}, {"labels": entries})
    with pytest.raises(DatasetLayoutError, match=re.escape(f"lists 1 file(s) not in {dest}, first '{archive_name(1)}'")):
        check_dataset({"kind": "afhqv2_64", "root": str(tmp_path)})


def test_image_without_a_label_is_refused(tmp_path):
    write_dataset(
        tmp_path / "afhqv2-64x64",
        {archive_name(0): png(images(1)[0]), archive_name(1): png(images(1)[0])},
        {"labels": [[archive_name(0), 0]]},
    )
    with pytest.raises(DatasetLayoutError, match=re.escape(f"has no label for 1 image(s), first '{archive_name(1)}'")):
        check_dataset({"kind": "afhqv2_64", "root": str(tmp_path)})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (json.dumps({"classes": []}).encode(), "has no key 'labels'"),
        (json.dumps({"labels": [["00000/img00000000.png", -1]]}).encode(), "class labels must be integers >= 0"),
    ],
)
def test_malformed_dataset_json_is_refused(tmp_path, content, message):
    write_dataset(tmp_path / "ffhq-64x64.zip", {archive_name(0): png(images(1)[0]), "dataset.json": content}, None)
    with pytest.raises(DatasetLayoutError, match=message):
        check_dataset({"kind": "ffhq64", "root": str(tmp_path)})


def test_empty_or_unreadable_sources_are_refused(tmp_path):
    (tmp_path / "ffhq-64x64").mkdir()
    with pytest.raises(DatasetLayoutError, match="ffhq-64x64 holds no image files"):
        check_dataset({"kind": "ffhq64", "root": str(tmp_path)})
    (tmp_path / "ffhq-64x64.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetLayoutError, match="ffhq-64x64.zip is not a readable zip"):
        check_dataset({"kind": "ffhq64", "root": str(tmp_path)})
    write_dataset(tmp_path / "ffhq-64x64.zip", {archive_name(0): png(images(1)[0])[:40]}, None)
    with pytest.raises(DatasetLayoutError, match=re.escape(f"ffhq-64x64.zip:{archive_name(0)} is not a readable image")):
        load_dataset({"kind": "ffhq64", "root": str(tmp_path)}, "train")


def test_only_the_train_split_exists(tmp_path):
    write_dataset(tmp_path / "ffhq-64x64.zip", {archive_name(0): png(images(1)[0])}, None)
    with pytest.raises(ValueError, match=r"dataset ffhq64: split 'test' is not one of \['train'\]"):
        load_dataset({"kind": "ffhq64", "root": str(tmp_path)}, "test")


@pytest.mark.parametrize("kind", sorted(STEMS))
def test_the_check_data_step_names_both_accepted_paths_and_the_layout(tmp_path, kind):
    spec = {"kind": kind, "root": str(tmp_path)}
    out = tmp_path / "check.json"
    with pytest.raises(DatasetLayoutError) as err:
        main(["check-data", "--spec", json.dumps(spec), "--out", str(out)])
    message = str(err.value)
    assert f"expected {tmp_path / STEMS[kind]}.zip or a folder {tmp_path / STEMS[kind]}" in message
    assert "expected layout: " in message and "dataset.json" in message
    assert not out.exists()
