"""The datasets of the paper miniature (tests/paper_miniature.py): a few generated images per dataset, each in its
official layout, and the hook that gives torchvision the generated CIFAR-10 files' md5s."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.data.edm_faces import AFHQV2_64, FFHQ64

SIZES = {"train": 4, "test": 2}
EDM_STEMS = {layout.kind: layout.stem for layout in (FFHQ64, AFHQV2_64)}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """cifar-10-batches-py: pickled dicts of uint8 N x 3072 and labels; returns the files' md5s."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = 1 if name.startswith("data") else SIZES["test"]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return {"train": [[n, md5_of(folder / n)] for n in names[:5]], "test": [["test_batch", md5_of(folder / "test_batch")]],
            "meta": md5_of(folder / "batches.meta")}


def write_celeba(root: Path, rng: np.random.Generator) -> None:
    """img_align_celeba/*.png at 178 x 218 and list_eval_partition.txt (0 train, 2 test)."""
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(SIZES["train"] + SIZES["test"]):
        name = f"{i + 1:06d}.png"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i < SIZES['train'] else 2}\n")
    (root / "list_eval_partition.txt").write_text("".join(lines))


def write_imagenet64(root: Path, rng: np.random.Generator) -> None:
    """train_data_batch_1..10.npz and val_data.npz: uint8 N x 12288 planes, 1-based labels."""
    root.mkdir(parents=True)
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        n = SIZES["test"] if name.startswith("val") else 1
        np.savez(root / name, data=rng.integers(0, 256, (n, 12288), dtype=np.uint8),
                 labels=rng.integers(1, 1001, n), mean=np.zeros(12288))


def write_lsun(root: Path, category: str, rng: np.random.Generator) -> None:
    """<category>_train / <category>_val: exported images (lsun's export.py writes .webp)."""
    for split, folder in (("train", f"{category}_train"), ("test", f"{category}_val")):
        (root / folder).mkdir(parents=True)
        for i in range(SIZES[split]):
            pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i:04d}.webp", lossless=True)


def write_edm_zip(root: Path, stem: str, rng: np.random.Generator) -> None:
    """<stem>.zip as EDM's dataset_tool.py writes it (stored members 00000/img00000000.png ..., dataset.json
    with labels null for an unconditional dataset); its one split is train."""
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / f"{stem}.zip", mode="w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(SIZES["train"]):
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, format="png")
            archive.writestr(f"{i // 1000:05d}/img{i:08d}.png", image.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


def write_datasets(cfg: dict, data: Path) -> tuple[dict, dict]:
    """Every dataset of the profile under ``data``; returns the miniature's datasets and CIFAR-10's md5s."""
    rng = np.random.default_rng(0)
    datasets, cifar_md5 = {}, {}
    for name, spec in cfg["datasets"].items():
        root = data / name
        kind = spec["kind"]
        if kind == "cifar10":
            cifar_md5 = write_cifar10(root, rng)
        elif kind == "celeba64":
            write_celeba(root, rng)
        elif kind == "imagenet64":
            write_imagenet64(root, rng)
        elif kind in EDM_STEMS:
            write_edm_zip(root, EDM_STEMS[kind], rng)
        else:
            write_lsun(root, spec["category"], rng)
        datasets[name] = {**spec, "root": str(root)} | ({"download": False} if "download" in spec else {})
    return datasets, cifar_md5


def write_cifar10_md5_hook(folder: Path, md5: dict) -> Path:
    """A sitecustomize that gives torchvision's CIFAR10 the generated files' md5s in every process of the run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f'''\
        import importlib.abc
        import importlib.machinery
        import sys

        MD5 = {md5!r}


        class _CifarMd5(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "torchvision.datasets.cifar":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                run = spec.loader.exec_module

                def exec_module(module):
                    run(module)
                    module.CIFAR10.train_list = MD5["train"]
                    module.CIFAR10.test_list = MD5["test"]
                    module.CIFAR10.meta = {{**module.CIFAR10.meta, "md5": MD5["meta"]}}

                spec.loader.exec_module = exec_module
                return spec


        sys.meta_path.insert(0, _CifarMd5())
        '''))
    return folder
