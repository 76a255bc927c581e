"""EDM (Karras et al. 2022): the ``edm`` family's schedule, denoiser and training loss.

Sigma space: x = y + sigma n with y the data and n ~ N(0, I); a denoiser D(x; sigma) estimates y
(bench.core.denoiser.SigmaDenoiser). The samplers in bench/samplers/edm.py only see that view, so the
same code runs EDM-trained networks (EDMNetworkDenoiser) and the other families' conversions to it
(bench.core.denoiser.as_sigma; EDM Table 2's VP and VE columns), on the grids of bench.core.sigma_grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.denoiser import LevelScore, VEDenoiserScore, scalar_sigma, sigma_prior
from bench.core.labels import network_label_dim, one_hot
from bench.nets.edm_precond import EDMPrecond

# EDM Table 1 / training/loss.py: ln(sigma) ~ N(P_mean, P_std^2) during training.
P_MEAN = -1.2
P_STD = 1.2


# ---------------------------------------------------------------------------------------------
# EDM training


class TimeConditionedBackbone(nn.Module):
    """Presents a ``net(x, t)`` network (our MLP) as an EDM backbone ``model(x, noise_labels, class_labels)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if class_labels is not None:
            raise ValueError("this backbone is unconditional; got class_labels, expected None (label_dim=0)")
        return self.net(x, noise_labels)


@dataclass(frozen=True)
class EDMSchedule:
    """The ``edm`` family's noise range and data scale (EDM Table 1: sigma in [0.002, 80], sigma_data = 0.5)."""

    sigma_min: float
    sigma_max: float
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max < math.inf and self.sigma_data > 0):
            raise ValueError(
                f"EDM schedule sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}, "
                f"sigma_data={self.sigma_data!r} must satisfy 0 < sigma_min < sigma_max < inf, sigma_data > 0"
            )

    def precond(self, net: nn.Module, data_shape: tuple[int, ...]) -> EDMPrecond:
        """``net(x, t)`` (our MLP) behind EDM's preconditioning: D = c_skip x + c_out F(c_in x; ln(sigma)/4) (Eq. 7).

        ``data_shape`` is (channels, height, width) of one image.
        """
        return EDMPrecond(
            TimeConditionedBackbone(net),
            data_shape[-1],
            data_shape[0],
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            sigma_data=self.sigma_data,
        )


class EDMNetworkDenoiser:
    """The ``edm`` family's adapter: a trained EDMPrecond as a SigmaDenoiser on [sigma_min, sigma_max].

    It leaves autograd alone (the caller picks inference_mode), so the
    PF-ODE likelihood can take the divergence of D through it. A class-conditional network (``label_dim`` > 0)
    is called with ``class_labels``, the class index of each row of the batch being sampled, set by the caller
    (bench.steps.sample) before the sampler runs, as one-hot rows (EDM generate.py L285, edm_sampler's
    ``net(x_hat, t_hat, class_labels)``).
    """

    def __init__(self, net: EDMPrecond):
        self.net = net
        self.sigma_min = float(net.sigma_min)
        self.sigma_max = float(net.sigma_max)
        self.label_dim = network_label_dim(net)
        self.class_labels: torch.Tensor | None = None
        self.nfe = 0

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = scalar_sigma(sigma)
        self.nfe += 1
        if not self.label_dim:
            return self.net(x, sigma.to(x.device)).to(x.dtype)
        if self.class_labels is None:
            raise ValueError(f"this network is class-conditional (label_dim={self.label_dim}): set class_labels first")
        labels = one_hot(self.class_labels.to(x.device), self.label_dim)
        return self.net(x, sigma.to(x.device), labels).to(x.dtype)

    def as_sigma_denoiser(self) -> EDMNetworkDenoiser:
        return self

    def as_score(self) -> VEDenoiserScore:
        """The score (D - x) / sigma^2 on 1000 geometric levels of the range (a ScoreFn), for the PF-ODE."""
        from bench.methods.ncsn import geometric_sigmas

        return VEDenoiserScore(self, geometric_sigmas(self.sigma_min, self.sigma_max, 1000))

    def with_levels(self, sigmas: torch.Tensor) -> LevelScore:
        """The score (D - x) / sigma^2 on the level table ``sigmas``, for score-SDE's PC sampler (its VE view).

        NFE stays counted here, in this denoiser's ``nfe``.
        """
        return LevelScore(VEDenoiserScore(self, sigmas), sigmas)

    prior = staticmethod(sigma_prior)


def edm_training_sigmas(n: int, gen: torch.Generator, *, P_mean: float = P_MEAN, P_std: float = P_STD) -> torch.Tensor:
    """Training noise levels, ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1), float32 [n]."""
    if not P_std > 0:
        raise ValueError(f"P_std={P_std!r} must be positive")
    return torch.exp(torch.randn(n, generator=gen) * P_std + P_mean)


def edm_loss(
    net: EDMPrecond, y: torch.Tensor, gen: torch.Generator, *, P_mean: float = P_MEAN, P_std: float = P_STD
) -> torch.Tensor:
    """Mean over elements of lambda(sigma) (D(y + sigma n; sigma) - y)^2 (EDM Eq. 2 and 8, Table 1).

    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2. The draws come from ``gen``
    (CPU) in a fixed order, sigmas then noise, so a loss is reproducible.
    """
    sigma = edm_training_sigmas(y.shape[0], gen, P_mean=P_mean, P_std=P_std)
    noise = torch.randn(y.shape, generator=gen)
    sigma = sigma.to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
    weight = (sigma**2 + net.sigma_data**2) / (sigma * net.sigma_data) ** 2
    denoised = net(y + sigma * noise.to(device=y.device, dtype=y.dtype), sigma)
    return (weight * (denoised - y) ** 2).mean()


def edm_family_loss(
    net: nn.Module,
    schedule: EDMSchedule,
    y: torch.Tensor,
    gen: torch.Generator,
    *,
    P_mean: float = P_MEAN,
    P_std: float = P_STD,
) -> torch.Tensor:
    """``edm_loss`` of ``net(x, t)`` behind the schedule's preconditioning (EDM Eq. 2 and 8), as a training loss_fn."""
    return edm_loss(schedule.precond(net, tuple(y.shape[1:])), y, gen, P_mean=P_mean, P_std=P_std)
