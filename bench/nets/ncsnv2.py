"""NCSNv2 score network (Song & Ermon 2020), RefineNet-style, state_dict-compatible with the
official ermongroup/ncsnv2 checkpoints (keys, order and shapes).

The network has no noise-level embedding: it predicts an unconditional field and the score at
level y is that field divided by sigmas[y] (paper Technique 3, s(x, sigma) = s(x) / sigma).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

_NORM_EPS = 1e-5

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
    "swish": nn.SiLU,
}


def ncsn_sigmas(sigma_begin: float, sigma_end: float, num_classes: int) -> torch.Tensor:
    """Geometric levels sigma_i = sigma_begin * (sigma_end / sigma_begin)^(i / (L - 1)), float32."""
    if not (sigma_begin > 0 and sigma_end > 0):
        raise ValueError(
            f"sigma_begin and sigma_end must be > 0, got {sigma_begin} and {sigma_end}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    # float64 then cast, as the official numpy code does, so the float32 values match its buffer
    log_sigmas = torch.linspace(
        math.log(sigma_begin), math.log(sigma_end), num_classes, dtype=torch.float64
    )
    return log_sigmas.exp().float()


def check_level_input(x: torch.Tensor, y: torch.Tensor, channels: int, num_levels: int) -> None:
    """Refuse what a RefineNet of NCSN (v1) or NCSNv2 cannot read: x not [N, channels, H, W] with even H and W,
    or y not an integer level index per row."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must have shape [N, {channels}, H, W], got {list(x.shape)}")
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"x height and width must be even, got {list(x.shape[2:])}")
    if y.is_floating_point() or y.is_complex() or y.shape != (x.shape[0],):
        raise ValueError(
            f"y must be an integer noise-level index tensor of shape [{x.shape[0]}] "
            f"(0..{num_levels - 1}), got dtype {y.dtype} shape {list(y.shape)}"
        )

class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++ (NCSN, Song & Ermon 2019, App. A.1), in the official code's form.

    out_k = gamma_k * ((x_k - mu_k) / s_k + alpha_k * (mu_k - m) / sqrt(v + eps)) + beta_k,
    with mu_k, s_k^2 the per-channel spatial mean and biased variance, and m, v the mean and
    unbiased variance of mu over channels (the official code scales the alpha term by gamma too).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        channel_mean = means.mean(dim=-1, keepdim=True)
        channel_var = means.var(dim=-1, keepdim=True)
        means_plus = (means - channel_mean) / torch.sqrt(channel_var + _NORM_EPS)
        h = F.instance_norm(x, eps=_NORM_EPS)
        h = h + (means_plus * self.alpha)[..., None, None]
        return self.gamma[:, None, None] * h + self.beta[:, None, None]


class ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 average pooling (halves the resolution)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


def _conv3x3(in_ch: int, out_ch: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution that keeps the resolution."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm, act, conv, norm, act, conv, plus shortcut.

    With dilation > 1 the official code does not pool even when down=True: dilated convs
    replace the downsampling and only the channel count changes.
    """

    def __init__(
        self, in_ch: int, out_ch: int, act: nn.Module, down: bool = False, dilation: int = 1
    ) -> None:
        super().__init__()
        self.act = act
        mid_ch = in_ch if down else out_ch
        self.conv1 = _conv3x3(in_ch, mid_ch, dilation)
        self.normalize2 = InstanceNorm2dPlus(mid_ch)
        pools = down and dilation == 1
        self.conv2 = (
            ConvMeanPool(mid_ch, out_ch, 3) if pools else _conv3x3(mid_ch, out_ch, dilation)
        )
        self.shortcut: nn.Module | None = None
        if pools:
            self.shortcut = ConvMeanPool(in_ch, out_ch, 1)
        elif dilation > 1 and (down or in_ch != out_ch):
            self.shortcut = _conv3x3(in_ch, out_ch, dilation)
        elif in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1)
        self.normalize1 = InstanceNorm2dPlus(in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.normalize1(x)))
        h = self.conv2(self.act(self.normalize2(h)))
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + h


class RCUBlock(nn.Module):
    """Residual conv units: n_blocks times (act, conv) x n_stages with an identity skip."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                self.add_module(f"{i}_{j}_conv", _conv3x3(features, features, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = getattr(self, f"{i}_{j}_conv")(self.act(x))
            x = x + residual
        return x


class CRPBlock(nn.Module):
    """Chained residual pooling: act, then n_stages of (5x5 max-pool, conv) summed into x."""

    def __init__(self, features: int, n_stages: int, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList(
            _conv3x3(features, features, bias=False) for _ in range(n_stages)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(F.max_pool2d(path, kernel_size=5, stride=1, padding=2))
            x = x + path
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: conv each input, resize bilinearly to a shape, and sum."""

    def __init__(self, in_planes: Sequence[int], features: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_planes)

    def forward(self, xs: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        resized = (
            F.interpolate(conv(x), size=tuple(shape), mode="bilinear", align_corners=True)
            for conv, x in zip(self.convs, xs, strict=True)
        )
        return sum(resized)


class RefineBlock(nn.Module):
    """RefineNet block: RCU per input, fusion (unless a single input), CRP, output RCU."""

    def __init__(
        self,
        in_planes: Sequence[int],
        features: int,
        act: nn.Module,
        start: bool = False,
        end: bool = False,
    ) -> None:
        super().__init__()
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, act) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act)
        self.msf = None if start else MSFBlock(in_planes, features)
        self.crp = CRPBlock(features, 2, act)

    def forward(self, xs: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, shape)
        return self.output_convs(self.crp(h))


class NCSNv2(nn.Module):
    """NCSNv2 for 32x32-class images; forward(x, y) returns the score s(x, sigmas[y])."""

    def __init__(
        self,
        *,
        ngf: int = 128,
        num_classes: int = 232,
        sigma_begin: float = 50.0,
        sigma_end: float = 0.01,
        channels: int = 3,
        image_size: int = 32,
        normalization: Literal["InstanceNorm++"] = "InstanceNorm++",
        nonlinearity: Literal["elu", "relu", "lrelu", "swish"] = "elu",
        sigma_dist: Literal["geometric"] = "geometric",
        logit_transform: bool = False,
        rescaled: bool = False,
    ) -> None:
        super().__init__()
        if normalization != "InstanceNorm++":
            raise ValueError(
                f"normalization {normalization!r} is not supported; use 'InstanceNorm++'"
            )
        if nonlinearity.lower() not in _ACTIVATIONS:
            raise ValueError(
                f"nonlinearity {nonlinearity!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if sigma_dist != "geometric":
            raise ValueError(f"sigma_dist {sigma_dist!r} is not supported; use 'geometric'")
        if image_size < 2 or image_size % 2:
            raise ValueError(
                f"image_size must be even and >= 2 (one 2x downsampling), got {image_size}"
            )
        self.ngf = ngf
        # The official config calls the noise levels "classes"; as an attribute that would read as class labels
        # (bench.core.labels.network_label_dim), so the count is kept under its meaning.
        self.num_levels = num_classes
        self.channels = channels
        self.image_size = image_size
        # data in [0, 1] is mapped to [-1, 1] unless the data pipeline already did it
        self.centers_input = not (logit_transform or rescaled)

        self.register_buffer("sigmas", ncsn_sigmas(sigma_begin, sigma_end, num_classes))
        self.act = act = _ACTIVATIONS[nonlinearity.lower()]()
        wide = 2 * ngf

        # registration order below fixes the state_dict order of the official checkpoint
        self.begin_conv = _conv3x3(channels, ngf)
        self.normalizer = InstanceNorm2dPlus(ngf)
        self.end_conv = _conv3x3(ngf, channels)
        self.res1 = nn.ModuleList([ResidualBlock(ngf, ngf, act), ResidualBlock(ngf, ngf, act)])
        self.res2 = nn.ModuleList(
            [ResidualBlock(ngf, wide, act, down=True), ResidualBlock(wide, wide, act)]
        )
        self.res3 = nn.ModuleList(
            [
                ResidualBlock(wide, wide, act, down=True, dilation=2),
                ResidualBlock(wide, wide, act, dilation=2),
            ]
        )
        self.res4 = nn.ModuleList(
            [
                ResidualBlock(wide, wide, act, down=True, dilation=4),
                ResidualBlock(wide, wide, act, dilation=4),
            ]
        )
        self.refine1 = RefineBlock([wide], wide, act, start=True)
        self.refine2 = RefineBlock([wide, wide], wide, act)
        self.refine3 = RefineBlock([wide, wide], ngf, act)
        self.refine4 = RefineBlock([ngf, ngf], ngf, act, end=True)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NCSNv2:
        """Build from the official YAML config as a dict (keys 'model' and 'data')."""
        model, data = config["model"], config["data"]
        if model.get("spec_norm", False):
            raise ValueError("model.spec_norm=True is not supported; the released models use False")
        return cls(
            ngf=model["ngf"],
            num_classes=model["num_classes"],
            sigma_begin=model["sigma_begin"],
            sigma_end=model["sigma_end"],
            channels=data["channels"],
            image_size=data["image_size"],
            normalization=model["normalization"],
            nonlinearity=model["nonlinearity"],
            sigma_dist=model.get("sigma_dist", "geometric"),
            logit_transform=data.get("logit_transform", False),
            rescaled=data.get("rescaled", False),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score s(x, sigmas[y]) = net(x) / sigmas[y]; x [N, C, H, W] in [0, 1], y [N] int64."""
        check_level_input(x, y, self.channels, self.num_levels)
        h = 2 * x - 1.0 if self.centers_input else x
        h = self.begin_conv(h)
        layer1 = self._run(self.res1, h)
        layer2 = self._run(self.res2, layer1)
        layer3 = self._run(self.res3, layer2)
        layer4 = self._run(self.res4, layer3)

        ref = self.refine1([layer4], layer4.shape[2:])
        ref = self.refine2([layer3, ref], layer3.shape[2:])
        ref = self.refine3([layer2, ref], layer2.shape[2:])
        ref = self.refine4([layer1, ref], layer1.shape[2:])

        out = self.end_conv(self.act(self.normalizer(ref)))
        return out / self.sigmas[y].view(-1, 1, 1, 1)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h)
        return h
