"""score-SDE (Song et al. 2021): its own networks read on bench data in [-1, 1].

score_sde_pytorch's get_score_fn (models/utils.py L129-172) conditions and scales its networks per SDE:
- VE (continuous): time_cond = sigma(t) on the network's data scale, score = net(x, sigma) (utils.py L163-165);
  an uncentered network (``centered: false``, every VE config) takes data in [0, 1] and maps it to 2x - 1 itself.
- VE (discrete, ve/cifar10_ncsnpp): time_cond = round((1 - t)(N - 1)), the index of the level in the network's
  own table, which its positional embedding reads and scale_by_sigma looks up (utils.py L167-170, ncsnpp.py L245).
- VP and sub-VP (continuous): labels = 999 t, score = -net(x, labels) / std(t) (utils.py L143-159), data in [-1, 1].
- VP (discrete): labels = t (N - 1), score = -net(x, labels) / sqrt(1 - alphas_cumprod)[labels.long()]
  (utils.py L153-157), on the VP SDE's N = 1000 DDPM table.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.denoiser import as_level, param_dtype, scalar_time
from bench.core.noise import NoiseSource
from bench.core.vp_schedule import VPSDE, SubVPSDE
from bench.methods.edm import EDMNetworkDenoiser
from bench.methods.ncsn import VENetworkScore, VESchedule
from bench.nets.edm_precond import PrecondCoefficients, Preconditioner, VPPrecond
from bench.nets.score_sde_ncsnpp import smld_sigmas
from bench.runtime.speed import unwrap_network

# score-SDE's continuous VP labels are 999 t (models/utils.py L150), EDM's VPPrecond c_noise (M - 1) t(sigma).
VP_LABEL_STEPS = 1000
VP_LABEL_STEPS_MINUS_ONE = VP_LABEL_STEPS - 1
# score-SDE's likelihood never goes below t = 1e-5 (likelihood.py L41, eps=1e-5).
VP_EPSILON_T = 1e-5
# model.num_scales of every CIFAR-10 config (configs/default_cifar10_configs.py L53): a discrete network's table.
DISCRETE_STEPS = 1000
# How far (relative) a level may lie from a discrete VE network's table entry and still be read as that entry.
LEVEL_RTOL = 1e-6


def centered(net: nn.Module) -> bool:
    """Whether score_sde network ``net`` (inside any speed wrapper) takes data in [-1, 1] rather than [0, 1]."""
    return bool(unwrap_network(net).centered)


class ScoreSdeVEScore(VENetworkScore):
    """grad_y log p_sigma(y) = net((y + 1) / 2, sigma / 2) / 2 for an uncentered net, net(y, sigma) otherwise.

    y = 2 x - 1 for the network's x in [0, 1]: a level sigma on y is sigma / 2 on x, and d/dy = (1/2) d/dx
    (score-SDE's continuous VE get_score_fn, models/utils.py L165: time_cond is sigma itself). A network with
    the positional embedding was trained on its table's levels (ve/cifar10_ncsnpp, training.continuous False):
    it takes the index of the level in its config's table (descending), and a level off the table is refused.
    """

    def __init__(self, net: nn.Module, schedule: VESchedule):
        super().__init__(net, schedule)
        self._half = not centered(net)
        inner = unwrap_network(net)
        discrete = getattr(inner, "embedding_type", "fourier") == "positional"
        # score-SDE's label comes from t and the config's N (models/utils.py L167-170), not from the network's
        # sigmas buffer (equal to it in a released checkpoint): the table is the config's.
        self._table = smld_sigmas(inner.sigma_min, inner.sigma_max, inner.num_scales) if discrete else None

    def _level_index(self, sigma: float) -> int:
        """The index of network-scale level ``sigma`` in the discrete network's table."""
        i = int(torch.argmin(torch.abs(torch.log(self._table / sigma))))
        if abs(float(self._table[i]) / sigma - 1) > LEVEL_RTOL:
            raise ValueError(
                f"level sigma={sigma!r} (on the network's data scale) is not one of the discrete network's "
                f"{len(self._table)} levels [{float(self._table[-1]):g} .. {float(self._table[0]):g}]: sample it "
                f"on that table (K = {len(self._table)} levels of the model's own range)"
            )
        return i

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = as_level(sigma)
        scale = 0.5 if self._half else 1.0
        x_in = (x + 1) * 0.5 if self._half else x
        if self._table is None:
            time_cond = torch.full((x.shape[0],), float(s) * scale, dtype=self._dtype, device=x.device)
        else:
            index = self._level_index(float(s) * scale)
            time_cond = torch.full((x.shape[0],), index, dtype=torch.int64, device=x.device)
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
        check_centered(net)
        super().__init__(VPPrecond(
            _TimeLabelled(net), data_shape[1], data_shape[0], beta_d=sde.beta_max - sde.beta_min,
            beta_min=sde.beta_min, M=VP_LABEL_STEPS, epsilon_t=VP_EPSILON_T,
        ))
        self.score_net = net
        self.sde = sde

    def as_vp_time_score(self, sde: VPSDE) -> ScoreSdeVPTimeScore:
        """The score of this network in time on its own SDE; ``sde`` (the grid's) must have the model's betas."""
        check_betas(sde, self.sde)
        return ScoreSdeVPTimeScore(self)


def check_betas(sde: VPSDE, own: VPSDE) -> None:
    """Refuse a grid's SDE whose beta(t) is not the model's ``own``."""
    if (sde.beta_min, sde.beta_max) != (own.beta_min, own.beta_max):
        raise ValueError(
            f"the VP SDE beta_min={sde.beta_min!r}, beta_max={sde.beta_max!r} is not the model's "
            f"(beta_min={own.beta_min!r}, beta_max={own.beta_max!r})"
        )


def check_centered(net: nn.Module) -> None:
    """Refuse a VP or sub-VP network on data in [0, 1]."""
    if not centered(net):
        raise ValueError(
            "a score-SDE VP network takes data in [-1, 1]: its network option 'centered' must be true"
        )


class ScoreSdeVPTimeScore:
    """score(x, t) = -net(x, 999 t) / std(t) on the model's SDE (models/utils.py L150-159): std(t)^2 =
    1 - exp(-int_0^t beta) for VP, std(t) = 1 - exp(-int_0^t beta) for sub-VP (``sde.std``).

    Calls and NFE go to the denoiser it reads.
    """

    def __init__(self, denoiser: ScoreSdeVPDenoiser | ScoreSdeDiscreteVPDenoiser):
        self.denoiser = denoiser
        self.sde = denoiser.sde
        self._dtype = param_dtype(denoiser.score_net)

    def std(self, t: torch.Tensor, labels: torch.Tensor) -> float:
        """std(t) of the score's division (``labels`` = the network's time input)."""
        return self.sde.std(t).item()

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
        return out / -self.std(t, labels)

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        """x_1 ~ N(0, I), score-SDE's ``VPSDE.prior_sampling``."""
        return noise.latent()


class ScoreSdeDiscreteVPTimeScore(ScoreSdeVPTimeScore):
    """score(x, t) = -net(x, 999 t) / sqrt(1 - alphas_cumprod)[floor(999 t)] (models/utils.py L153-157)."""

    def std(self, t: torch.Tensor, labels: torch.Tensor) -> float:
        # labels.long() truncates the float32 label as score-SDE's does (utils.py L157).
        return float(self.denoiser.sqrt_1m_alphas_cumprod[int(labels[0].item())])


class ScoreSdeDiscreteVPDenoiser:
    """score-SDE's discrete-time VP network (training.continuous False: vp/cifar10_ddpmpp, vp/ddpm/cifar10).

    Read in VP time only, as its configs' PC sampler reads it (``ScoreSdeDiscreteVPTimeScore``); ``N`` is the
    DDPM table of its training (sde_lib.VPSDE(N = model.num_scales)), computed as score-SDE does, in float32
    (sde_lib.py L125-L129).
    """

    def __init__(self, net: nn.Module, sde: VPSDE, N: int = DISCRETE_STEPS):
        check_centered(net)
        self.score_net = net
        self.sde = sde
        self.N = N
        betas = torch.linspace(sde.beta_min / N, sde.beta_max / N, N)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - torch.cumprod(1.0 - betas, dim=0))
        self.nfe = 0

    def as_vp_time_score(self, sde: VPSDE) -> ScoreSdeDiscreteVPTimeScore:
        """The score of this network in time on its own SDE; ``sde`` (the grid's) must have the model's betas."""
        check_betas(sde, self.sde)
        return ScoreSdeDiscreteVPTimeScore(self)


class SubVPPrecond(Preconditioner):
    """D(x; sigma) = x - sigma F(s x, 999 t(sigma)) with s = s(t(sigma)): a sub-VP eps network in EDM's
    sigma space (x_t / s = x_0 + sigma z, sigma = std / s; bench.core.vp_schedule.SubVPSDE)."""

    def __init__(self, model: nn.Module, img_resolution: int, img_channels: int, sde: SubVPSDE):
        super().__init__(model, img_resolution, img_channels)
        self.sde = sde
        self.sigma_min = float(sde.sigma(VP_EPSILON_T))
        self.sigma_max = float(sde.sigma(1.0))

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """c_skip = 1, c_out = -sigma, c_in = s = 1 / (sigma / 2 + sqrt(1 + sigma^2 / 4)), c_noise = 999 t(sigma)."""
        half = 0.5 * sigma
        return PrecondCoefficients(
            c_skip=torch.ones_like(sigma),
            c_out=-sigma,
            c_in=1 / (half + torch.sqrt(1 + half**2)),
            c_noise=(VP_LABEL_STEPS_MINUS_ONE * self.sde.time_of_sigma(sigma)).to(sigma.dtype).flatten(),
        )


class ScoreSdeSubVPDenoiser(EDMNetworkDenoiser):
    """A sub-VP network (subvp/*_continuous) as D(x; sigma) (``SubVPPrecond``: the PF-ODE likelihood's and EDM's
    samplers' view) and in sub-VP time (score-SDE's own samplers)."""

    def __init__(self, net: nn.Module, sde: SubVPSDE, data_shape: tuple[int, ...]):
        check_centered(net)
        super().__init__(SubVPPrecond(_TimeLabelled(net), data_shape[1], data_shape[0], sde))
        self.score_net = net
        self.sde = sde

    def as_vp_time_score(self, sde: VPSDE) -> ScoreSdeVPTimeScore:
        """The score of this network in time on its own SDE; ``sde`` (the grid's) must have the model's betas."""
        check_betas(sde, self.sde)
        return ScoreSdeVPTimeScore(self)
