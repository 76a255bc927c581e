"""The networks python -m bench perf times: random weights, each as a plain eps network net(x, t)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from bench.config import read_yaml
from bench.core.schedules import DiscreteSchedule
from bench.perf.cells import redraw_zero_parameters

NETWORKS = ("mlp", "ddpm_unet", "adm_unet", "edm_songunet")
DEFAULT_MANIFESTS = Path(__file__).resolve().parents[2] / "tests" / "manifests"
DEFAULT_CELLS = Path(__file__).resolve().parents[2] / "workflows" / "config" / "default.yaml"
# (batch, steps) per network: the embedded sampling batch, and a CPU-sized one at CIFAR-10 scale.
SIZES = {"mlp": (1000, 10), "ddpm_unet": (2, 4), "adm_unet": (2, 4), "edm_songunet": (2, 4)}
MANIFESTS = {
    "ddpm_unet": "ddim_cifar10.json",
    "adm_unet": "iddpm_cifar10.json",
    "edm_songunet": "edm_songunet_ddpmpp_cifar10.json",
}


class EpsChannels(nn.Module):
    """The first ``channels`` output channels: the eps of a network that also predicts variances (iDDPM)."""

    def __init__(self, net: nn.Module, channels: int):
        super().__init__()
        self.net = net
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)[:, : self.channels]


class EDMAsEps(nn.Module):
    """eps of an EDM denoiser on the VP chain: x_n / sqrt(abar_n) = y + sigma_n eps (EDM Eq. 4, Table 1 VP).

    sigma_n = sqrt((1 - abar_n) / abar_n) and eps = (x_n / sqrt(abar_n) - D(x_n / sqrt(abar_n); sigma_n)) / sigma_n.
    """

    def __init__(self, precond: nn.Module, alpha_bars: torch.Tensor):
        super().__init__()
        self.precond = precond
        self.register_buffer("alpha_bars", alpha_bars.to(torch.float32))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alpha_bars[t.round().long()].reshape(-1, 1, 1, 1)
        sigma = ((1.0 - abar) / abar).sqrt()
        y = x / abar.sqrt()
        return (y - self.precond(y, sigma.flatten())) / sigma


def build_perf_network(
    name: str, schedule: DiscreteSchedule, *, seed: int = 0, manifests: Path = DEFAULT_MANIFESTS
) -> tuple[nn.Module, tuple[int, int, int]]:
    """A network with random weights as a plain eps network, in eval mode, and its sample shape.

    Output layers that their code zero-initialises are redrawn, so outputs depend on the input
    (which the peer comparison needs; costs do not change).
    """
    if name not in NETWORKS:
        raise ValueError(f"network {name!r} is not one of {list(NETWORKS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            from bench.nets.factory import build_network

            # The embedded default's own network (models.mlp.network), whatever its size.
            network = read_yaml(DEFAULT_CELLS)["models"]["mlp"]["network"]
            net: nn.Module = build_network(network, channels=1, image_size=8)
            shape = (1, 8, 8)
        else:
            kwargs = _manifest(manifests, name)["constructor_kwargs"]
            shape = (3, 32, 32)
            if name == "ddpm_unet":
                from bench.nets.ddpm_unet import DDPMUNet

                net = DDPMUNet.from_config(kwargs["config"])
            elif name == "adm_unet":
                from bench.nets.adm_unet import ADMUNet

                net = EpsChannels(ADMUNet(**kwargs), channels=3)
            else:
                from bench.nets.edm_networks import build_edm_network

                net = EDMAsEps(build_edm_network(kwargs), schedule.alpha_bars)
        redraw_zero_parameters(net)
    return net.eval().requires_grad_(False), shape


def _manifest(directory: Path, name: str) -> dict:
    path = Path(directory) / MANIFESTS[name]
    if not path.is_file():
        raise FileNotFoundError(f"network {name!r} needs its manifest {path}; pass the manifests folder (--manifests)")
    return json.loads(path.read_text())
