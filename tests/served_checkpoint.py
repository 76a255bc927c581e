"""A checkpoint file in conftest's served folder, fetched and converted by the real CLI steps, as the DAG's
fetch_checkpoint and convert_checkpoint rules run them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from bench.checkpoints.registry import get_checkpoint
from bench.cli import main


def fetch_and_convert(served, tmp_path: Path, name: str, filename: str, model: dict, dataset: dict) -> tuple[dict, Path]:
    """Registry entry ``name`` pointed at ``filename`` in the served folder (its md5 pinned), fetched, then converted
    for the ``model`` config on ``dataset``; returns the entry and the converted model file."""
    folder, base = served
    entry = {**dataclasses.asdict(get_checkpoint(name)), "url": f"{base}/{filename}", "hash_type": "md5",
             "hash": hashlib.md5((folder / filename).read_bytes()).hexdigest()}
    ckpt, lock, out = tmp_path / f"{name}.ckpt", tmp_path / f"{name}.lock.json", tmp_path / f"{name}.pt"
    assert main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(lock),
                 "--out", str(ckpt)]) == 0
    spec = {"model": model, "dataset": dataset, "checkpoint": entry}
    assert main(["convert-checkpoint", "--spec", json.dumps(spec), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return entry, out
