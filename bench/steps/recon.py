"""The recon step: DDIM's reconstruction error of one (model, sampler, K) over a data split (DDIM Table 2).

Each image's error is kept, batch by batch, in OUT.partial.npz beside the record, under the hash of the
job's settings and model file: a job killed part way resumes after its last finished batch, with the same
batches, so its record is the one an uninterrupted job writes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bench.checkpoints.download import file_digest
from bench.checkpoints.model_file import load_model
from bench.core.denoiser import NonFiniteOutputError
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import make_denoiser
from bench.metrics.nll import standard_error
from bench.metrics.recon import reconstruction_mse
from bench.runtime.io import atomic_json, atomic_npz, load_npz
from bench.runtime.stepclock import StepClock
from bench.steps.sample import sampler_view

# What the record says of the protocol (DDIM Sec. 5.4: "per-dimension mean squared error (scaled to [0, 1])").
PROTOCOL = {"scale": "[0, 1]", "clamped": True, "encoder": "ddim_ode"}


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.npz")


def job_key(spec: dict, model: Path) -> str:
    """sha256 of the job's settings and its model file's sha256: a partial file of other settings is not resumed."""
    settings = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(f"{settings}\n{file_digest(model, 'sha256')}".encode()).hexdigest()


def resumed(path: Path, key: str) -> tuple[list[float], int | None]:
    """The per-image errors and NFE a killed job of the same key saved (none if absent or another key's)."""
    if not path.exists():
        return [], None
    saved = load_npz(path, required=("key", "mse", "nfe"))
    if str(saved["key"]) != key:
        return [], None
    return saved["mse"].tolist(), int(saved["nfe"])


def run(spec: dict, out: Path, model: Path, threads: int) -> None:
    """The error of encoding each image of spec["split"] along spec["sampler"]'s grid with K steps and decoding
    it with that sampler; a non-finite decode fails the record, naming the image."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    key = job_key(spec, model)
    net, schedule, ckpt = load_model(model)
    net = net.to(clock.device)
    denoiser = make_denoiser(ckpt["config"]["family"], net, schedule, tuple(ckpt["data_shape"]),
                             noise=ckpt["config"].get("noise"))
    view, grid = sampler_view(denoiser, spec["sampler"], spec["K"])
    split = load_dataset(spec["dataset"], spec["split"])
    x0 = torch.from_numpy(levels_to_unit(split.images, split.max_level)).to(getattr(torch, spec["state_dtype"]))
    batch = spec["batch_size"]
    partial = partial_path(out)
    mse, nfe = resumed(partial, key)
    if mse:
        print(f"{spec['context']}: resuming after {len(mse)} of {len(x0)} images", file=sys.stderr, flush=True)
    record = {"n": len(x0), "split": spec["split"], "grid": grid.tolist(), "batch_size": batch,
              "sampler": spec["sampler"], "state_dtype": spec["state_dtype"], **PROTOCOL}
    failure = None
    with torch.inference_mode():
        for start in range(len(mse), len(x0), batch):
            stop = min(start + batch, len(x0))
            calls = denoiser.nfe
            try:
                err, decoded = reconstruction_mse(
                    view, spec["sampler"], x0[start:stop].to(clock.device), grid, torch.arange(start, stop)
                )
            except NonFiniteOutputError as bad_call:
                failure = f"network output not finite at timestep index {bad_call.step}", start + bad_call.index
                break
            bad = ~torch.isfinite(decoded.reshape(stop - start, -1)).all(dim=1)
            if bad.any():
                failure = "decoded image not finite", start + int(torch.nonzero(bad)[0])
                break
            nfe = denoiser.nfe - calls
            mse.extend(err.cpu().tolist())
            atomic_npz(partial, key=np.array(key), mse=np.array(mse), nfe=np.array(nfe))
    if failure is not None:
        message = f"{spec['context']}: {failure[0]} for {spec['split']} image {failure[1]}"
        print(f"error: {message}", file=sys.stderr)
        atomic_json({"status": "failed", "error": message, **record, **clock.record()}, out)
        return
    values = torch.tensor(mse, dtype=torch.float64)
    atomic_json(
        {"status": "ok", "mse": float(values.mean()), "mse_sem": standard_error(values), "nfe": nfe, **record,
         **clock.record()},
        out,
    )
    partial.unlink(missing_ok=True)
