"""The train step: a model trained on a dataset and saved in our model format (the loop is bench.steps.train)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.checkpoints.model_file import save_model
from bench.data import load_dataset
from bench.data.digits import levels_to_unit
from bench.families import build_schedule, training_loss
from bench.nets.factory import build_network
from bench.runtime.stepclock import StepClock
from bench.steps.train import TrainConfig, train_eps_model


def run(spec: dict, out: Path, threads: int) -> None:
    """Train ``spec["model"]`` on ``spec["dataset"]``; after an interruption it resumes from OUT.resume."""
    torch.set_num_threads(threads)
    clock = StepClock.start()
    model_cfg = spec["model"]
    train = load_dataset(spec["dataset"], "train")
    data = torch.from_numpy(levels_to_unit(train.images, train.max_level)).to(clock.device)
    shape = tuple(data.shape[1:])
    torch.manual_seed(model_cfg["train"]["seed"])  # the initial weights are part of the seeded run
    net = build_network(model_cfg["network"], channels=shape[0], image_size=shape[1]).to(clock.device)
    schedule = build_schedule(model_cfg["schedule"])
    resume = out.with_name(out.name + ".resume")
    ema, losses = train_eps_model(
        net,
        data,
        schedule,
        TrainConfig(**model_cfg["train"]),
        resume_path=resume,
        progress=True,
        loss_fn=training_loss(model_cfg, train.max_level),
    )
    info = {"final_loss": float(np.mean(losses[-200:])), "steps": len(losses), **clock.record()}
    save_model(out, ema.cpu(), model_cfg, shape, train.max_level, info)
    resume.unlink(missing_ok=True)
