"""The check-data step: a dataset's folder layout checked, its image counts written."""

from __future__ import annotations

from pathlib import Path

from bench.data import check_dataset
from bench.runtime.io import atomic_json


def run(spec: dict, out: Path) -> None:
    """Check the layout of the dataset ``spec`` describes; write its kind and image count per split to ``out``."""
    atomic_json({"kind": spec["kind"], "images": check_dataset(spec)}, out)
