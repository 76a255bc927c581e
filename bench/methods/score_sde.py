"""score-SDE (Song et al. 2021): its own continuous-time networks read on bench data in [-1, 1].

score_sde_pytorch's get_score_fn (models/utils.py L129-172) conditions and scales its networks per SDE:
- VE (continuous): time_cond = sigma(t) on the network's data scale, score = net(x, sigma) (utils.py L163-170);
  an uncentered network (``centered: false``, every VE config) takes data in [0, 1] and maps it to 2x - 1 itself.
- VP (continuous): labels = 999 t, score = -net(x, labels) / std(t) (utils.py L143-159), data in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.denoiser import as_level
from bench.methods.edm import EDMNetworkDenoiser
from bench.methods.ncsn import VENetworkScore, VESchedule
from bench.nets.edm_precond import VPPrecond
from bench.runtime.speed import unwrap_network

# score-SDE's continuous VP labels are 999 t (models/utils.py L150), EDM's VPPrecond c_noise (M - 1) t(sigma).
VP_LABEL_STEPS = 1000
# score-SDE's likelihood never goes below t = 1e-5 (likelihood.py L41, eps=1e-5).
VP_EPSILON_T = 1e-5


def centered(net: nn.Module) -> bool:
    """Whether score_sde network ``net`` (inside any speed wrapper) takes data in [-1, 1] rather than [0, 1]."""
    return bool(unwrap_network(net).centered)


class ScoreSdeVEScore(VENetworkScore):
    """grad_y log p_sigma(y) = net((y + 1) / 2, sigma / 2) / 2 for an uncentered net, net(y, sigma) otherwise.

    y = 2 x - 1 for the network's x in [0, 1]: a level sigma on y is sigma / 2 on x, and d/dy = (1/2) d/dx
    (score-SDE's continuous VE get_score_fn, models/utils.py L165: time_cond is sigma itself).
    """

    def __init__(self, net: nn.Module, schedule: VESchedule):
        super().__init__(net, schedule)
        self._half = not centered(net)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        scale = 0.5 if self._half else 1.0
        x_in = (x + 1) * 0.5 if self._half else x
        time_cond = torch.full((x.shape[0],), float(s) * scale, dtype=self._dtype, device=x.device)
        out = self.net(x_in.to(self._dtype), time_cond).to(x.dtype)
        self.nfe += 1
        return out * scale


class _TimeLabelled(nn.Module):
    """A score_sde network as EDM preconditioning's backbone: F(x, c_noise), class labels unused."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, c_noise)


def score_sde_vp_denoiser(
    net: nn.Module, beta_min: float, beta_max: float, data_shape: tuple[int, ...]
) -> EDMNetworkDenoiser:
    """D(x; sigma) = x - sigma net(x / sqrt(1 + sigma^2), 999 t(sigma)) (EDM Table 1, VP column; EDM Eq. 4).

    Read as the VP-SDE score, (s D(x / s) - x) / (1 - s^2) = -net(x, 999 t) / std(t): score-SDE's own
    (models/utils.py L150-159); EDM's VPPrecond is how EDM converted these networks (EDM Sec. 3).
    """
    if not centered(net):
        raise ValueError("a score-SDE VP network takes data in [-1, 1]: its network option 'centered' must be true")
    channels, size = data_shape[0], data_shape[1]
    precond = VPPrecond(
        _TimeLabelled(net), size, channels, beta_d=beta_max - beta_min, beta_min=beta_min,
        M=VP_LABEL_STEPS, epsilon_t=VP_EPSILON_T,
    )
    return EDMNetworkDenoiser(precond)
