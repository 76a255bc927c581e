"""The fetch-checkpoint step: an official checkpoint downloaded and verified against its md5 / sha256."""

from __future__ import annotations

from pathlib import Path

from bench.checkpoints.convert import fetch_checkpoint


def run(spec: dict, out: Path, lock: Path) -> None:
    """Download ``spec["checkpoint"]`` to ``out``; ``lock`` pins the sha256 of a download with no published hash."""
    fetch_checkpoint(spec["checkpoint"], out, lock)
