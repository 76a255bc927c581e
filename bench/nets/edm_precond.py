"""EDM preconditioning wrappers D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (Karras et al.
2022, Eq. 7 and Table 1) and a builder from the official pickles' constructor kwargs.

Each wrapper keeps its backbone as child `model`, so state_dict keys equal the official ones.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from bench.nets.song_unet import SongUNet

OFFICIAL_MODULE_PREFIX = "training.networks."


class PrecondCoefficients(NamedTuple):
    """Per-sample c_skip, c_out, c_in (shape [N,1,1,1]) and c_noise (shape [N])."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


class Preconditioner(nn.Module):
    """Shared forward pass; subclasses supply the coefficients of EDM Table 1."""

    # Constructor keywords that belong to the wrapper rather than the backbone.
    HYPERPARAMETERS: tuple[str, ...] = ()
    # Backbone output channels per image channel (iDDPM also predicts variances).
    OUTPUT_CHANNEL_FACTOR = 1
    DEFAULT_MODEL_TYPE = "SongUNet"

    def __init__(
        self,
        model: nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model = model

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """c_skip, c_out, c_in, c_noise for a float32 sigma of shape [N,1,1,1]."""
        raise NotImplementedError

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Nearest noise level the network supports; continuous wrappers return sigma as is."""
        return torch.as_tensor(sigma)

    def _class_labels(
        self, class_labels: torch.Tensor | None, x: torch.Tensor
    ) -> torch.Tensor | None:
        if self.label_dim == 0:
            return None
        # EDM training/networks.py L657: labels are float rows of width label_dim; no labels = a zero row.
        if class_labels is None:
            return torch.zeros([1, self.label_dim], device=x.device)
        # EDM reshapes any tensor to (-1, label_dim), which turns class indices [N] into one broadcast
        # row when N == label_dim; only the shapes that reshape leaves unchanged are accepted here.
        rows = class_labels.shape[0] if class_labels.ndim == 2 else None
        if class_labels.ndim != 2 or class_labels.shape[1] != self.label_dim or rows not in (1, x.shape[0]):
            raise ValueError(
                f"class_labels of shape {list(class_labels.shape)} for a batch of {x.shape[0]}: expected "
                f"one-hot rows [{x.shape[0]}, {self.label_dim}] (or [1, {self.label_dim}] for every sample)"
            )
        return class_labels.to(torch.float32)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs,
    ) -> torch.Tensor:
        """Denoised estimate D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (EDM Eq. 7)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if sigma.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"sigma has {sigma.shape[0]} values for a batch of {x.shape[0]}; "
                "pass one sigma or one per sample"
            )
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        labels = self._class_labels(class_labels, x)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32

        c = self.coefficients(sigma)
        F_x = self.model((c.c_in * x).to(dtype), c.c_noise, class_labels=labels, **model_kwargs)
        return c.c_skip * x + c.c_out * F_x[:, : self.img_channels].to(torch.float32)


class EDMPrecond(Preconditioner):
    """EDM preconditioning: c_in = 1/sqrt(sigma^2+sigma_data^2), c_noise = ln(sigma)/4."""

    HYPERPARAMETERS = ("sigma_min", "sigma_max", "sigma_data")
    DEFAULT_MODEL_TYPE = "DhariwalUNet"

    def __init__(
        self,
        model: nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__(model, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """EDM Table 1, 'Ours' column."""
        sd2 = self.sigma_data**2
        return PrecondCoefficients(
            c_skip=sd2 / (sigma**2 + sd2),
            c_out=sigma * self.sigma_data / (sigma**2 + sd2).sqrt(),
            c_in=1 / (sigma**2 + sd2).sqrt(),
            c_noise=sigma.log().flatten() / 4,
        )


class VPPrecond(Preconditioner):
    """Variance-preserving preconditioning (EDM Table 1, 'VP' column); F predicts epsilon."""

    HYPERPARAMETERS = ("beta_d", "beta_min", "M", "epsilon_t")

    def __init__(
        self,
        model: nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
    ) -> None:
        super().__init__(model, img_resolution, img_channels, label_dim, use_fp16)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d."""
        sigma = torch.as_tensor(sigma)
        root = (self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt()
        return (root - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """c_skip = 1, c_out = -sigma, c_in = 1/sqrt(1+sigma^2), c_noise = (M-1) t(sigma)."""
        return PrecondCoefficients(
            c_skip=torch.ones_like(sigma),
            c_out=-sigma,
            c_in=1 / (sigma**2 + 1).sqrt(),
            c_noise=((self.M - 1) * self.sigma_inv(sigma)).flatten(),
        )


class VEPrecond(Preconditioner):
    """Variance-exploding preconditioning (EDM Table 1, 'VE' column); F predicts sigma*score."""

    HYPERPARAMETERS = ("sigma_min", "sigma_max")

    def __init__(
        self,
        model: nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
    ) -> None:
        super().__init__(model, img_resolution, img_channels, label_dim, use_fp16)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""
        return PrecondCoefficients(
            c_skip=torch.ones_like(sigma),
            c_out=sigma,
            c_in=torch.ones_like(sigma),
            c_noise=(0.5 * sigma).log().flatten(),
        )


class iDDPMPrecond(Preconditioner):
    """Improved-DDPM preconditioning on the discrete grid u_0 > ... > u_M = 0 (EDM Table 1).

    u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1) with the
    cosine schedule alpha_bar(j) = sin^2(pi/2 * j / (M (C_2 + 1))). The grid is a buffer `u`.
    """

    HYPERPARAMETERS = ("C_1", "C_2", "M")
    OUTPUT_CHANNEL_FACTOR = 2
    DEFAULT_MODEL_TYPE = "DhariwalUNet"

    def __init__(
        self,
        model: nn.Module,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
    ) -> None:
        super().__init__(model, img_resolution, img_channels, label_dim, use_fp16)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # float32 throughout, like the official grid, so rounded sigmas match bit for bit. On the CPU even
        # under a default device such as meta (a layout check), whose tensors have no values to read.
        with torch.device("cpu"):
            # One scalar j at a time, as networks.py L594-596: a vectorised sin may round differently.
            u = torch.zeros(M + 1)
            for j in range(M, 0, -1):
                u[j - 1] = ((u[j] ** 2 + 1) / (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def alpha_bar(self, j: torch.Tensor | int) -> torch.Tensor:
        """alpha_bar(j) = sin^2(pi/2 * j / M / (C_2 + 1)) (iDDPM cosine schedule)."""
        j = torch.as_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """Nearest grid value u_j (or its index j) for every element of sigma."""
        sigma = torch.as_tensor(sigma)
        flat = sigma.to(device=self.u.device, dtype=torch.float32).reshape(-1, 1)
        index = (flat - self.u.reshape(1, -1)).abs().argmin(dim=1)
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor) -> PrecondCoefficients:
        """c_skip = 1, c_out = -sigma, c_in = 1/sqrt(1+sigma^2), c_noise = M - 1 - j(sigma)."""
        index = self.round_sigma(sigma, return_index=True).to(torch.float32)
        return PrecondCoefficients(
            c_skip=torch.ones_like(sigma),
            c_out=-sigma,
            c_in=1 / (sigma**2 + 1).sqrt(),
            c_noise=(self.M - 1 - index).flatten(),
        )


PRECONDITIONERS: dict[str, type[Preconditioner]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
}

BACKBONES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet}


def register_backbone(name: str, cls: type[nn.Module]) -> None:
    """Make `cls` buildable as model_type `name` (e.g. DhariwalUNet from its own module)."""
    existing = BACKBONES.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"model_type {name!r} is already registered to {existing.__qualname__}")
    BACKBONES[name] = cls


def build_edm_network(constructor_kwargs: dict) -> nn.Module:
    """Wrapper + backbone from an official pickle's constructor kwargs (incl. class_name)."""
    kwargs = dict(constructor_kwargs)
    class_name = str(kwargs.pop("class_name", "training.networks.EDMPrecond"))
    short_name = class_name.removeprefix(OFFICIAL_MODULE_PREFIX)
    if short_name not in PRECONDITIONERS:
        allowed = ", ".join(OFFICIAL_MODULE_PREFIX + n for n in PRECONDITIONERS)
        raise ValueError(f"unknown class_name {class_name!r}; allowed: {allowed}")
    precond_cls = PRECONDITIONERS[short_name]

    model_type = kwargs.pop("model_type", precond_cls.DEFAULT_MODEL_TYPE)
    if model_type not in BACKBONES:
        raise ValueError(
            f"unknown model_type {model_type!r}; registered: {', '.join(sorted(BACKBONES))}"
        )
    for required in ("img_resolution", "img_channels"):
        if required not in kwargs:
            raise ValueError(f"constructor_kwargs lacks {required!r} (got {sorted(kwargs)})")

    img_resolution = int(kwargs.pop("img_resolution"))
    img_channels = int(kwargs.pop("img_channels"))
    label_dim = int(kwargs.pop("label_dim", 0))
    use_fp16 = bool(kwargs.pop("use_fp16", False))
    hyperparameters = {k: kwargs.pop(k) for k in precond_cls.HYPERPARAMETERS if k in kwargs}

    backbone = BACKBONES[model_type](
        img_resolution=img_resolution,
        in_channels=img_channels,
        out_channels=img_channels * precond_cls.OUTPUT_CHANNEL_FACTOR,
        label_dim=label_dim,
        **kwargs,
    )
    return precond_cls(
        backbone, img_resolution, img_channels, label_dim, use_fp16, **hyperparameters
    )
