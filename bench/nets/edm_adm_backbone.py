"""The ADM network inside an EDM iDDPMPrecond pickle, called as ADM calls it: (x_t, t, y) -> [eps, v].

EDM converted guided-diffusion's 64x64_diffusion.pt into iDDPMPrecond(DhariwalUNet) (baseline-imagenet-64x64-cond-
adm.pkl). The wrapper feeds its backbone c_in x = x_t, the VP-scaled state of the discrete chain, and c_noise =
M - 1 - j, ADM's own step index t (NVlabs/edm training/networks.py L607-612), then keeps the first C of its 2C output
channels (L614). Calling the backbone directly with x_t and t returns all 2C channels, ADM's [eps, v] (guided-diffusion
learn_sigma), which the iddpm family's learned-variance samplers need; a class index y becomes the one-hot row that
DhariwalUNet's map_label takes (EDM's conversion of ADM's label_emb).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.labels import one_hot
from bench.nets.edm_networks import build_edm_network
from bench.nets.edm_precond import iDDPMPrecond


class EDMAdmBackbone(nn.Module):
    """An iDDPMPrecond's backbone as an iDDPM-style [eps, v] network; keeps the wrapper (its keys) as ``precond``."""

    def __init__(self, precond: nn.Module) -> None:
        super().__init__()
        if not isinstance(precond, iDDPMPrecond):
            raise ValueError(
                f"network type 'edm_adm_backbone' needs an iDDPMPrecond pickle (ADM's learned-variance network), "
                f"got {type(precond).__name__}"
            )
        self.precond = precond
        self.out_channels = precond.model.out_channels
        self.num_classes = precond.label_dim or None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ADM's output [N, 2C, H, W] for the chain's state x_t at step index t (class indices y, if conditional)."""
        if (y is None) != (self.num_classes is None):
            need = "no y (unconditional)" if self.num_classes is None else "class labels y [N]"
            raise ValueError(f"network with num_classes={self.num_classes} needs {need}")
        labels = None if y is None else one_hot(y.to(torch.int64), self.num_classes)
        return self.precond.model(x.to(torch.float32), t.to(torch.float32), labels)


def build_edm_adm_backbone(constructor_kwargs: dict) -> EDMAdmBackbone:
    """The backbone view of the EDM network an official pickle's constructor kwargs build."""
    return EDMAdmBackbone(build_edm_network(constructor_kwargs))
