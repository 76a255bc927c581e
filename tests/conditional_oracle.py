"""An exact class-conditional denoiser: data of class y ~ N(m_y, s_y^2 I), inside EDM's real preconditioner.

D(x; sigma, y) = m_y + s_y^2 / (s_y^2 + sigma^2) (x - m_y) is E[x0 | x0 + sigma n = x, y]. The backbone
returns the F that makes EDMPrecond's c_skip x + c_out F equal to it, reading the class from the one-hot
rows EDMPrecond passes on, so the whole conditioning path (denoiser adapter, preconditioner, backbone's
``class_labels``) is exercised.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.nets.edm_precond import EDMPrecond

MEANS = (-1.5, 0.0, 2.0)
STDS = (0.3, 0.6, 1.0)
SIGMA_DATA = 0.5


class ClassGaussianBackbone(nn.Module):
    """F(c_in x; ln(sigma) / 4, one-hot y) of the per-class Gaussian's exact denoiser (EDM Eq. 7 solved for F)."""

    def __init__(self, means: tuple[float, ...], stds: tuple[float, ...]):
        super().__init__()
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))
        self.register_buffer("variances", torch.tensor(stds, dtype=torch.float64) ** 2)
        # The sampling step reads the network's device and dtype from its first parameter.
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float32))

    def forward(self, x_in: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x_in.ndim - 1)
        sigma = torch.exp(4 * noise_labels.double()).reshape(shape)
        x = x_in.double() * torch.sqrt(sigma**2 + SIGMA_DATA**2)
        y = class_labels.argmax(dim=1)
        m, v = self.means[y].reshape(shape), self.variances[y].reshape(shape)
        d = m + v / (v + sigma**2) * (x - m)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / torch.sqrt(sigma**2 + SIGMA_DATA**2)
        return ((d - c_skip * x) / c_out).float()


def class_gaussian_oracle(shape: tuple[int, int, int], sigma_min: float = 0.002, sigma_max: float = 200.0) -> EDMPrecond:
    """The oracle as an EDM network with label_dim = len(MEANS), for images of ``shape`` (C, H, W), H = W."""
    return EDMPrecond(
        ClassGaussianBackbone(MEANS, STDS), shape[1], shape[0], label_dim=len(MEANS),
        sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=SIGMA_DATA,
    )
