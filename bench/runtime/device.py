"""The device a job computes on: its SLURM GPU, a free GPU of the workstation, or the CPU.

- Under SLURM (``SLURM_JOB_ID`` set) with ``CUDA_VISIBLE_DEVICES`` set, SLURM has given the job
  its own GPUs and hidden the others: the job takes the first visible one, ``cuda:0``.
- On a workstation, ``snakemake --cores all --resources gpu=N`` with ``gpu: 1`` on the GPU rules
  (local/config.yaml) runs at most N GPU jobs at once, but Snakemake's resources are counts
  without slot numbers, so nothing tells a job *which* GPU is free. Each job therefore claims one:
  it takes an exclusive, non-blocking ``flock`` on a lock file per visible GPU and keeps the first
  it gets for the life of the process. The kernel releases the lock when the process exits or
  dies, so a crashed job leaves no stale claim. Lock files live in ``$DPM_BENCH_GPU_LOCKS`` or
  ``<tempdir>/dpm-bench-gpu-locks`` and are named after the physical GPU (the
  ``CUDA_VISIBLE_DEVICES`` entry, else the ordinal), so jobs that see the GPUs differently agree.
- Without CUDA, or with ``CUDA_VISIBLE_DEVICES=""``: the CPU.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, NamedTuple

import torch

LOCK_DIR_ENV = "DPM_BENCH_GPU_LOCKS"


class DeviceChoice(NamedTuple):
    """The device to compute on and a one-line description of it for provenance."""

    device: torch.device
    description: str


class NoFreeGPUError(RuntimeError):
    """Every visible GPU stayed claimed by another job for longer than the caller would wait."""


def default_lock_dir() -> Path:
    """Where GPU claims are kept: ``$DPM_BENCH_GPU_LOCKS`` or ``<tempdir>/dpm-bench-gpu-locks``."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "dpm-bench-gpu-locks")


def visible_gpu_ids(count: int, env: dict[str, str] | None = None) -> list[str]:
    """Physical names of the ``count`` GPUs CUDA shows: CUDA_VISIBLE_DEVICES entries, else ordinals."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


def _try_lock(path: Path) -> IO | None:
    try:
        handle = open(path, "a+")
    except PermissionError:  # another user's claim file: that GPU is theirs
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim_gpu(
    ids: list[str], lock_dir: Path, *, wait_seconds: float | None = None, poll_seconds: float = 1.0
) -> tuple[int, IO]:
    """Lock the first free GPU of ``ids``; return its index and the open lock file (the claim).

    Waits while all are taken, up to ``wait_seconds`` (None: until one is free).
    """
    if not ids:
        raise ValueError("claim_gpu needs at least one GPU id, got none")
    lock_dir.mkdir(parents=True, exist_ok=True)
    paths = [lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock" for gpu in ids]
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    announced = False
    while True:
        for index, path in enumerate(paths):
            handle = _try_lock(path)
            if handle is not None:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()}\n")
                handle.flush()
                return index, handle
        if deadline is not None and time.monotonic() >= deadline:
            raise NoFreeGPUError(
                f"all {len(ids)} visible GPUs {ids} stayed claimed by other jobs for {wait_seconds} s "
                f"(lock files in {lock_dir}); run no more GPU jobs than GPUs: --resources gpu=N "
                f"with N <= {len(ids)}"
            )
        if not announced:
            print(f"dpm-bench: all GPUs {ids} are busy; waiting for one (locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_seconds)


def cpu_choice() -> DeviceChoice:
    """The CPU, described with its model and this process's torch thread count."""
    return DeviceChoice(
        torch.device("cpu"),
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    )


def _choose(lock_dir: Path, wait_seconds: float | None, poll_seconds: float) -> tuple[DeviceChoice, IO | None]:
    if not torch.cuda.is_available():
        return cpu_choice(), None
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    job = os.environ.get("SLURM_JOB_ID")
    if job and listed is not None:
        described = f"cuda:0 {torch.cuda.get_device_name(0)} (SLURM job {job}, CUDA_VISIBLE_DEVICES={listed})"
        return DeviceChoice(torch.device("cuda", 0), described), None
    ids = visible_gpu_ids(torch.cuda.device_count())
    if not ids:
        return cpu_choice(), None
    index, claim = claim_gpu(ids, lock_dir, wait_seconds=wait_seconds, poll_seconds=poll_seconds)
    name = torch.cuda.get_device_name(index)
    return (
        DeviceChoice(torch.device("cuda", index), f"cuda:{index} {name} (GPU {ids[index]}, claimed in {lock_dir})"),
        claim,
    )


def device_label(choice: DeviceChoice) -> str:
    """The device as result records and tables name it: 'cpu' or 'cuda:<index> (<GPU name>)'."""
    if choice.device.type != "cuda":
        return choice.device.type
    return f"{choice.device} ({torch.cuda.get_device_name(choice.device)})"


_CHOICE: DeviceChoice | None = None
_CLAIM: IO | None = None  # the open lock file: closing it would give the GPU away


def select_device(
    *, lock_dir: Path | None = None, wait_seconds: float | None = None, poll_seconds: float = 1.0
) -> DeviceChoice:
    """This process's device (chosen once, then the same on every call) and its description."""
    global _CHOICE, _CLAIM
    if _CHOICE is None:
        _CHOICE, _CLAIM = _choose(lock_dir or default_lock_dir(), wait_seconds, poll_seconds)
    return _CHOICE
