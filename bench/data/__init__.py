"""Datasets by config entry."""

from __future__ import annotations

from bench.data.digits import ImageSplit, load_digits_split


def load_dataset(spec: dict, split: str) -> ImageSplit:
    """The ``split`` of the dataset described by a config entry of ``datasets``."""
    if spec["kind"] == "digits":
        return load_digits_split(split, test_fraction=spec.get("test_fraction", 0.2), seed=spec.get("split_seed", 0))
    raise ValueError(f"dataset kind {spec['kind']!r} is not one of ['digits']")
