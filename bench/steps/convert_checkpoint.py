"""The convert-checkpoint step: an official checkpoint turned into our model format."""

from __future__ import annotations

from pathlib import Path

from bench.checkpoints.convert import convert_checkpoint
from bench.data import DATA_SHAPES


def run(spec: dict, out: Path, checkpoint: Path) -> None:
    """Convert the downloaded ``checkpoint`` of ``spec["model"]``, for data of ``spec["dataset"]``'s shape."""
    shape, max_level = DATA_SHAPES[spec["dataset"]["kind"]]
    convert_checkpoint(spec["checkpoint"], checkpoint, spec["model"], shape, max_level, out)
