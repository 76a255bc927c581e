"""Families adapt a network to the denoiser interface the samplers call.

Discrete VP families (DDPM, DDIM, iDDPM, Analytic-DPM) map (x_n, n) to predictions of eps and x_0;
``nfe`` counts network evaluations, so tables report measured NFE, not a formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.schedules import DiscreteSchedule


class NonFiniteOutputError(RuntimeError):
    """The network returned NaN or Inf: carries the step and the first bad sample's index in the batch."""

    def __init__(self, step: int, index: int):
        super().__init__(f"network output is not finite at step {step} for batch index {index}")
        self.step = step
        self.index = index


def check_finite(out: torch.Tensor, step: int) -> None:
    """Raise NonFiniteOutputError naming the step and the first sample whose output is NaN or Inf."""
    if math.isfinite(out.sum().item()):
        return  # the common case costs one sum (NaN and Inf propagate); locate the bad sample only on failure
    finite = torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise NonFiniteOutputError(step, int(torch.nonzero(~finite)[0]))


@dataclass
class Prediction:
    """What a denoiser returns at one step: predicted noise and clean image (in the sampler state's dtype)."""

    eps: torch.Tensor
    x0: torch.Tensor


class DiscreteEpsDenoiser:
    """An eps network on a discrete chain: x0 = x_n / sqrt(abar_n) - sqrt(1 / abar_n - 1) eps (DDPM Eq. 15)."""

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, *, time_scale: float = 1.0):
        self.net = net
        self.schedule = schedule
        self.alpha_bars = schedule.alpha_bars
        self.time_scale = time_scale
        self.nfe = 0
        self._param = next(net.parameters())
        # 1 / sqrt(abar_n) and sqrt(1 / abar_n - 1) per step, once, in float64 (DDPM's sqrt_recip_alphas_cumprod
        # and sqrt_recipm1_alphas_cumprod).
        self._recip_sqrt_abar = torch.rsqrt(self.alpha_bars).tolist()
        self._sqrt_recip_m1_abar = torch.sqrt(1.0 / self.alpha_bars - 1.0).tolist()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, n: int) -> Prediction:
        t = torch.full((x.shape[0],), float(n) * self.time_scale, device=x.device)
        out = self.net(x.to(self._param.dtype), t.to(self._param.dtype))
        self.nfe += 1
        check_finite(out, n)  # before any cast to the state's dtype, which keeps every value finite or not
        eps = out.to(x.dtype)
        return Prediction(eps=eps, x0=self.x0_of(x, eps, n))

    def x0_of(self, x: torch.Tensor, eps: torch.Tensor, n: int) -> torch.Tensor:
        """x0 = x_n / sqrt(abar_n) - sqrt(1 / abar_n - 1) eps (DDPM Eq. 15), two ops into a fresh tensor."""
        return torch.mul(x, self._recip_sqrt_abar[n]).add_(eps, alpha=-self._sqrt_recip_m1_abar[n])


def clip_prediction(pred: Prediction, x: torch.Tensor, abar: torch.Tensor) -> Prediction:
    """Clip x0 to [-1, 1] and recompute eps from it, so that the update stays self-consistent."""
    x0 = pred.x0.clamp(-1.0, 1.0)
    eps = (x - torch.sqrt(abar) * x0) / torch.sqrt(1.0 - abar)
    return Prediction(eps=eps, x0=x0)


def predict(denoiser, x: torch.Tensor, n: int, abar: torch.Tensor, *, clip_x0: bool) -> Prediction:
    """One denoiser call at step n, with x0 optionally clipped (the first move of every reverse step)."""
    pred = denoiser(x, n)
    return clip_prediction(pred, x, abar) if clip_x0 else pred


def predict_x0(denoiser, x: torch.Tensor, n: int, *, clip_x0: bool) -> torch.Tensor:
    """x0_hat of one denoiser call at step n, clipped to [-1, 1] when asked (DDPM's mean needs no eps)."""
    x0 = denoiser(x, n).x0
    return x0.clamp(-1.0, 1.0) if clip_x0 else x0
