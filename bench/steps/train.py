"""Training of a network with its family's loss (L_simple by default, DDPM Eq. 14), EMA and resumable state."""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from bench.core.schedules import DiscreteSchedule
from bench.families.ddpm import simple_loss
from bench.runtime.io import atomic_torch_save, load_torch_file


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    ema: float
    seed: int
    checkpoint_every: int = 1000
    t_sampler: str = "uniform"


T_SAMPLERS = ("uniform", "loss_aware")


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA copy has {len(ema_params)} parameter tensors, the model {len(params)}")
    with torch.no_grad():
        # One fused pass over all tensors: a per-tensor loop cost 5% of a step of the small MLP.
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def train_eps_model(
    net: nn.Module,
    data: torch.Tensor,
    schedule: DiscreteSchedule,
    cfg: TrainConfig,
    *,
    resume_path: Path | None = None,
    progress: bool = True,
    loss_fn=simple_loss,
) -> tuple[nn.Module, list[float]]:
    """Train ``net`` on ``data`` (float, [-1, 1]) with ``loss_fn(net, schedule, x0, gen)``; return EMA net and losses.

    ``cfg.t_sampler`` "loss_aware" draws t by iDDPM's loss-second-moment importance sampling: the
    loss then gets the sampler as its ``t_sampler`` keyword. With ``resume_path``, the full training
    state (weights, EMA, optimiser, generator, t-sampler, step) is saved there every
    ``checkpoint_every`` steps and training resumes from it, giving the same result as an
    uninterrupted run.
    """
    t_sampler = _t_sampler(cfg.t_sampler, schedule, loss_fn)
    if t_sampler is not None:
        loss_fn = partial(loss_fn, t_sampler=t_sampler)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = copy.deepcopy(net).requires_grad_(False)
    # The fused kernel updates every tensor in one pass (the per-tensor loop was 20% of a step of
    # the small MLP on a CPU); it is Adam's same update, summed in another order in the last bits.
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
    losses: list[float] = []
    start = 0
    if resume_path is not None and resume_path.exists():
        state = load_torch_file(resume_path)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        losses = list(state["losses"])
        start = int(state["step"])
        saved = state.get("t_sampler")
        if (saved is None) != (t_sampler is None):
            raise ValueError(
                f"{resume_path} was saved by a run with t_sampler {'uniform' if saved is None else 'loss_aware'!r}, "
                f"this run has {cfg.t_sampler!r}"
            )
        if t_sampler is not None:
            t_sampler.load_state_dict(saved)
        if progress:
            print(f"train: resuming from step {start} of {cfg.steps} ({resume_path})", file=sys.stderr, flush=True)
    net.train()
    bar = tqdm(
        range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train", mininterval=2.0
    )
    for step in bar:
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)
        loss = loss_fn(net, schedule, data[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, net, cfg.ema)
        losses.append(loss.item())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
        done = step + 1
        if resume_path is not None and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state = {
                "net": net.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "losses": losses,
                "step": done,
            }
            if t_sampler is not None:
                state["t_sampler"] = t_sampler.state_dict()
            atomic_torch_save(state, resume_path)
    ema.eval()
    return ema, losses


def _t_sampler(name: str, schedule, loss_fn):
    """None for uniform t, else the loss-aware sampler over the schedule's T steps (checked against the loss)."""
    if name not in T_SAMPLERS:
        raise ValueError(f"train t_sampler {name!r} is not one of {list(T_SAMPLERS)}")
    if name == "uniform":
        return None
    if "t_sampler" not in inspect.signature(loss_fn).parameters:
        raise ValueError(
            f"train t_sampler 'loss_aware' needs a loss that weights its samples (iddpm's hybrid or vlb), "
            f"not {getattr(loss_fn, 'func', loss_fn).__name__}"
        )
    from bench.methods.iddpm import LossSecondMomentSampler

    return LossSecondMomentSampler(schedule.T)
