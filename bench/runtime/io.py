"""Atomic writes and guarded reads: a killed job never leaves a file that looks complete."""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class CorruptFileError(RuntimeError):
    """A results file that exists but cannot be read: truncated, corrupted or of the wrong kind."""


class OutputWriteError(OSError):
    """An output could not be written (disk full, file size limit, permissions); nothing was left in its place."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it into place.

    Temporary files of ``path`` left by a killed writer are removed first: each output has one
    writer at a time (Snakemake runs one job per output), so none of them belongs to a live one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise OutputWriteError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: Path) -> Path:
    import torch  # here, not at the top: steps that write no torch file start without torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_json(obj: Any, path: Path) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")

    return atomic_write(path, write)


def atomic_npz(path: Path, **arrays: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def atomic_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_torch_file(path: Path) -> Any:
    """torch.load with weights_only=True, turning any read failure into an error naming the file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptFileError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def load_npz(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read every array of an .npz file, checking the ``required`` keys, with errors naming the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptFileError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    missing = [k for k in required if k not in arrays]
    if missing:
        raise CorruptFileError(f"{path} lacks arrays {missing}; it has {sorted(arrays)}")
    return arrays


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptFileError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or _is_torch_tensor(obj):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _is_torch_tensor(obj: Any) -> bool:
    """Whether obj is a torch.Tensor, without importing torch (a process that has none made no tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)
