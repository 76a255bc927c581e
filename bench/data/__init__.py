"""Datasets by config entry."""

from __future__ import annotations

from importlib import import_module

from bench.data.digits import ImageSplit, load_digits_split

# kind -> (module, split loader, layout check) of the user-supplied datasets of the paper profile.
USER_DATASETS = {
    "cifar10": ("bench.data.cifar10", "load_cifar10_split", "check_cifar10"),
    "celeba64": ("bench.data.celeba64", "load_celeba64_split", "check_celeba64"),
    "imagenet64": ("bench.data.imagenet64", "load_imagenet64_split", "check_imagenet64"),
    "lsun": ("bench.data.lsun", "load_lsun_split", "check_lsun"),
    "ffhq64": ("bench.data.edm_faces", "load_ffhq64_split", "check_ffhq64"),
    "afhqv2_64": ("bench.data.edm_faces", "load_afhqv2_64_split", "check_afhqv2_64"),
}
# Image shape (C, H, W) and top integer level of each kind.
DATA_SHAPES = {
    "digits": ((1, 8, 8), 16),
    "cifar10": ((3, 32, 32), 255),
    "celeba64": ((3, 64, 64), 255),
    "imagenet64": ((3, 64, 64), 255),
    "lsun": ((3, 256, 256), 255),
    "ffhq64": ((3, 64, 64), 255),
    "afhqv2_64": ((3, 64, 64), 255),
}
KINDS = ("digits", *USER_DATASETS)


def _user(kind: str, which: int):
    if kind not in USER_DATASETS:
        raise ValueError(f"dataset kind {kind!r} is not one of {list(KINDS)}")
    module, *names = USER_DATASETS[kind]
    return getattr(import_module(module), names[which])


def load_dataset(spec: dict, split: str) -> ImageSplit:
    """The ``split`` of the dataset described by a config entry of ``datasets``."""
    if spec["kind"] == "digits":
        return load_digits_split(split, test_fraction=spec.get("test_fraction", 0.2), seed=spec.get("split_seed", 0))
    return _user(spec["kind"], 0)(spec, split)


def check_dataset(spec: dict) -> dict[str, int]:
    """Images per split, after checking the layout (DatasetLayoutError names the path and the layout)."""
    if spec["kind"] == "digits":
        return {s: len(load_dataset(spec, s).images) for s in ("train", "test")}
    return _user(spec["kind"], 1)(spec)
