"""score-SDE (Song et al. 2021): its own continuous-time networks read on bench data in [-1, 1].

score_sde_pytorch's get_score_fn (models/utils.py L129-172) conditions and scales its networks per SDE:
- VE (continuous): time_cond = sigma(t) on the network's data scale, score = net(x, sigma) (utils.py L163-170);
  an uncentered network (``centered: false``, every VE config) takes data in [0, 1] and maps it to 2x - 1 itself.
- VP (continuous): labels = 999 t, score = -net(x, labels) / std(t) (utils.py L143-159), data in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.denoiser import as_level, param_dtype, scalar_time
from bench.core.noise import NoiseSource
from bench.core.vp_schedule import VPSDE
from bench.methods.edm import EDMNetworkDenoiser
from bench.methods.ncsn import VENetworkScore, VESchedule
from bench.nets.edm_precond import VPPrecond
from bench.runtime.speed import unwrap_network

# score-SDE's continuous VP labels are 999 t (models/utils.py L150), EDM's VPPrecond c_noise (M - 1) t(sigma).
VP_LABEL_STEPS = 1000
VP_LABEL_STEPS_MINUS_ONE = VP_LABEL_STEPS - 1
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


class ScoreSdeVPDenoiser(EDMNetworkDenoiser):
    """D(x; sigma) = x - sigma net(x / sqrt(1 + sigma^2), 999 t(sigma)) (EDM Table 1, VP column; EDM Eq. 4).

    EDM's VPPrecond is how EDM converted these networks (EDM Sec. 3). score-SDE's own samplers read the
    network directly in VP time (``as_vp_time_score``), as score-SDE does, rather than through D.
    """

    def __init__(self, net: nn.Module, sde: VPSDE, data_shape: tuple[int, ...]):
        if not centered(net):
            raise ValueError(
                "a score-SDE VP network takes data in [-1, 1]: its network option 'centered' must be true"
            )
        super().__init__(VPPrecond(
            _TimeLabelled(net), data_shape[1], data_shape[0], beta_d=sde.beta_max - sde.beta_min,
            beta_min=sde.beta_min, M=VP_LABEL_STEPS, epsilon_t=VP_EPSILON_T,
        ))
        self.score_net = net
        self.sde = sde

    def as_vp_time_score(self, sde: VPSDE) -> ScoreSdeVPTimeScore:
        """The VP-SDE score of this network on ``sde``, which must be the network's own."""
        if (sde.beta_min, sde.beta_max) != (self.sde.beta_min, self.sde.beta_max):
            raise ValueError(
                f"the VP SDE beta_min={sde.beta_min!r}, beta_max={sde.beta_max!r} is not the model's "
                f"(beta_min={self.sde.beta_min!r}, beta_max={self.sde.beta_max!r})"
            )
        return ScoreSdeVPTimeScore(self)


class ScoreSdeVPTimeScore:
    """score(x, t) = -net(x, 999 t) / std(t), std(t)^2 = 1 - exp(-int_0^t beta) (models/utils.py L150-159).

    Calls and NFE go to the ScoreSdeVPDenoiser it reads.
    """

    def __init__(self, denoiser: ScoreSdeVPDenoiser):
        self.denoiser = denoiser
        self.sde = denoiser.sde
        self._dtype = param_dtype(denoiser.score_net)

    @property
    def nfe(self) -> int:
        return self.denoiser.nfe

    def check_times(self, times: torch.Tensor) -> None:
        """Refuse times outside the SDE's (0, 1]."""
        times = torch.as_tensor(times, dtype=torch.float64)
        if torch.any(times <= 0) or torch.any(times > 1):
            raise ValueError(f"VP SDE times {times.tolist()} must lie in (0, 1]")

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = scalar_time(t)
        self.check_times(t)
        labels = torch.full((x.shape[0],), VP_LABEL_STEPS_MINUS_ONE * float(t), dtype=self._dtype, device=x.device)
        out = self.denoiser.score_net(x.to(self._dtype), labels).to(x.dtype)
        self.denoiser.nfe += 1
        # 1 - s^2 = -expm1(-int beta), exact for small t.
        return out / -torch.sqrt(-torch.expm1(-self.sde.integral(t))).item()

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """x_1 ~ N(0, I), score-SDE's ``VPSDE.prior_sampling``."""
        return noise.latent()
