"""Sigma-space test fixtures: an EDM network as a SigmaDenoiser, our MLP behind EDM's preconditioning, and
a discrete grid read in sigma space (the pipeline builds these views through bench.core.spaces)."""

from __future__ import annotations

import torch
from torch import nn

from bench.core.denoiser import scalar_sigma
from bench.core.schedules import DiscreteSchedule, sigma_of_alpha_bar
from bench.methods.edm import TimeConditionedBackbone
from bench.nets.edm_precond import EDMPrecond
from bench.nets.mlp import MLPDenoiser


class PrecondDenoiser:
    """An EDM-preconditioned network (EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond) as a SigmaDenoiser,
    rounding sigma as the network does (iDDPMPrecond snaps to its levels u_j)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.sigma_min = float(net.sigma_min)
        self.sigma_max = float(net.sigma_max)
        self.nfe = 0

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.net.round_sigma(torch.as_tensor(sigma, dtype=torch.float64)).to(torch.float64)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = scalar_sigma(sigma)
        self.nfe += 1
        return self.net(x, sigma.to(x.device)).to(x.dtype)


def edm_mlp(*, channels: int = 1, image_size: int = 8, sigma_data: float = 0.5, **mlp_options) -> EDMPrecond:
    """Our MLP denoiser behind EDM preconditioning: D = c_skip x + c_out F(c_in x; ln(sigma)/4) (EDM Eq. 7)."""
    mlp = MLPDenoiser(channels=channels, image_size=image_size, **mlp_options)
    return EDMPrecond(TimeConditionedBackbone(mlp), image_size, channels, sigma_data=sigma_data)


def discrete_sigma_grid(schedule: DiscreteSchedule, steps: torch.Tensor) -> torch.Tensor:
    """The sigmas of ascending 0-based discrete steps, descending, with 0 appended (a DDIM grid in sigma space)."""
    steps = torch.as_tensor(steps, dtype=torch.int64)
    sigmas = sigma_of_alpha_bar(schedule.alpha_bars[steps]).flip(0)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
