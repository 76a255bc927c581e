"""NCSN's CondRefineNetDilated (Song & Ermon 2019), state_dict-compatible with ermongroup/ncsn's run.zip checkpoints.

Citations are to ermongroup/ncsn @7f27f4a1, models/cond_refinenet_dilated.py unless a file is named. The network is
noise-conditional through its normalisation only: every conditional InstanceNorm++ reads row y of an embedding
(gamma, alpha, beta). Its output is the score at level sigmas[y] itself: the DSM target it is trained on is
-(x~ - x) / sigma^2 (losses/dsm.py L29-38), and nothing divides by sigma (L414-417), unlike NCSNv2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.nets.ncsnv2 import check_level_input

_NORM_EPS = 1e-5


def ncsn_v1_sigmas(sigma_begin: float, sigma_end: float, num_classes: int) -> torch.Tensor:
    """Geometric levels sigma_begin .. sigma_end, descending float64 (runners/anneal_runner.py L232-233)."""
    if not (sigma_begin > 0 and sigma_end > 0):
        raise ValueError(f"sigma_begin and sigma_end must be > 0, got {sigma_begin} and {sigma_end}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    # numpy float64, as the official sampler computes its step sizes from these very values
    return torch.from_numpy(np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), num_classes)))


class CondInstanceNorm2dPlus(nn.Module):
    """Conditional InstanceNorm++ (NCSN App. A.1; ConditionalInstanceNorm2dPlus, L304-333).

    out = gamma_y ((x - mu) / s + alpha_y (mu - m) / sqrt(v + eps)) + beta_y, mu, s^2 the per-channel spatial mean
    and biased variance, m, v the mean and unbiased variance of mu over channels; (gamma, alpha, beta) = embed(y).
    """

    def __init__(self, num_features: int, num_levels: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.embed = nn.Embedding(num_levels, 3 * num_features)
        # L312-313: gamma and alpha start at N(1, 0.02), beta at 0
        with torch.no_grad():
            self.embed.weight[:, : 2 * num_features].normal_(1.0, 0.02)
            self.embed.weight[:, 2 * num_features :].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        means = (means - means.mean(dim=-1, keepdim=True)) / torch.sqrt(means.var(dim=-1, keepdim=True) + _NORM_EPS)
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        h = F.instance_norm(x, eps=_NORM_EPS) + (means * alpha)[..., None, None]
        return gamma[..., None, None] * h + beta[..., None, None]


def _conv3x3(in_ch: int, out_ch: int, *, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution that keeps the resolution (conv3x3 L7-10 without bias, dilated_conv3x3 L19-20 with)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
    """Convolution, then the mean of each 2x2 block (L206-221; CIFAR-10 never adjusts the padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class CondResidualBlock(nn.Module):
    """ConditionalResidualBlock (L249-301): norm, ELU, conv, norm, ELU, conv, plus a shortcut.

    ``down`` without dilation halves the resolution (ConvMeanPool); with a dilation the official block keeps it and
    its shortcut is a dilated 3x3 convolution (L257-262), as the resolution-keeping one where channels change.
    """

    def __init__(
        self, in_ch: int, out_ch: int, num_levels: int, act: nn.Module, *, down: bool = False, dilation: int = 1
    ) -> None:
        super().__init__()
        self.act = act
        mid_ch = in_ch if down else out_ch
        pools = down and dilation == 1
        if not down and dilation == 1 and in_ch != out_ch:
            # L276 would call nn.Conv2d(in, out) without a kernel size: no official network builds this block.
            raise ValueError(
                f"an undilated block that keeps the resolution keeps its channels, got {in_ch} -> {out_ch}"
            )
        self.conv1 = _conv3x3(in_ch, mid_ch, dilation=dilation)
        self.normalize2 = CondInstanceNorm2dPlus(mid_ch, num_levels)
        self.conv2 = ConvMeanPool(mid_ch, out_ch, 3) if pools else _conv3x3(mid_ch, out_ch, dilation=dilation)
        self.shortcut: nn.Module | None = None
        if pools:
            self.shortcut = ConvMeanPool(in_ch, out_ch, 1)
        elif down or in_ch != out_ch:
            self.shortcut = _conv3x3(in_ch, out_ch, dilation=dilation)
        self.normalize1 = CondInstanceNorm2dPlus(in_ch, num_levels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.normalize1(x, y)))
        h = self.conv2(self.act(self.normalize2(h, y)))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class CondRCUBlock(nn.Module):
    """Residual conv units (CondRCUBlock, L116-139): n_blocks times (norm, ELU, bias-free conv) x n_stages + skip."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, num_levels: int, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                self.add_module(f"{i}_{j}_norm", CondInstanceNorm2dPlus(features, num_levels))
                self.add_module(f"{i}_{j}_conv", _conv3x3(features, features, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = getattr(self, f"{i}_{j}_conv")(self.act(getattr(self, f"{i}_{j}_norm")(x, y)))
            x = x + residual
        return x


class CondCRPBlock(nn.Module):
    """Chained residual pooling (CondCRPBlock, L93-113): ELU, then n_stages of (norm, 5x5 mean pool, conv) summed.

    The official attribute is called maxpool but is an AvgPool2d counting its zero padding (L102).
    """

    def __init__(self, features: int, n_stages: int, num_levels: int, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.convs = nn.ModuleList(_conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.norms = nn.ModuleList(CondInstanceNorm2dPlus(features, num_levels) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for norm, conv in zip(self.norms, self.convs, strict=True):
            path = conv(F.avg_pool2d(norm(path, y), kernel_size=5, stride=1, padding=2))
            x = x + path
        return x


class CondMSFBlock(nn.Module):
    """Multi-resolution fusion (CondMSFBlock, L142-165): norm and conv each input, resize bilinearly, sum."""

    def __init__(self, in_planes: Sequence[int], features: int, num_levels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(c, features) for c in in_planes)
        self.norms = nn.ModuleList(CondInstanceNorm2dPlus(c, num_levels) for c in in_planes)

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        resized = (
            F.interpolate(conv(norm(x, y)), size=tuple(shape), mode="bilinear", align_corners=True)
            for conv, norm, x in zip(self.convs, self.norms, xs, strict=True)
        )
        return sum(resized)


class CondRefineBlock(nn.Module):
    """RefineNet block (CondRefineBlock, L168-203): RCU per input, fusion (unless one input), CRP, output RCU."""

    def __init__(
        self, in_planes: Sequence[int], features: int, num_levels: int, act: nn.Module, *, start: bool = False,
        end: bool = False,
    ) -> None:
        super().__init__()
        self.adapt_convs = nn.ModuleList(CondRCUBlock(c, 2, 2, num_levels, act) for c in in_planes)
        self.output_convs = CondRCUBlock(features, 3 if end else 1, 2, num_levels, act)
        self.msf = None if start else CondMSFBlock(in_planes, features, num_levels)
        self.crp = CondCRPBlock(features, 2, num_levels, act)

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs, strict=True)]
        h = hs[0] if self.msf is None else self.msf(hs, y, shape)
        return self.output_convs(self.crp(h, y), y)


class CondRefineNetDilated(nn.Module):
    """NCSN's score network (L336-417); forward(x, y) is the score s(x, sigmas[y]) for images x in [0, 1]."""

    def __init__(
        self,
        *,
        ngf: int = 128,
        num_classes: int = 10,
        sigma_begin: float = 1.0,
        sigma_end: float = 0.01,
        channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if image_size < 2 or image_size % 2:
            raise ValueError(f"image_size must be even and >= 2 (one 2x downsampling), got {image_size}")
        self.ngf = ngf
        # The official config calls the noise levels "classes"; as an attribute that would read as class labels
        # (bench.core.labels.network_label_dim), so the count is kept under its meaning.
        self.num_levels = num_classes
        self.channels = channels
        self.image_size = image_size
        # Data in [0, 1] mapped to [-1, 1] inside (L399-400; configs/anneal.yml's logit_transform is false).
        self.centers_input = True
        # No buffer: the official state_dict has no level table; the sampler builds it from the config (L232-233).
        self._sigmas = ncsn_v1_sigmas(sigma_begin, sigma_end, num_classes)
        self.act = act = nn.ELU()
        wide = 2 * ngf
        levels = num_classes

        # registration order below fixes the state_dict order of the official checkpoint (L347-391)
        self.begin_conv = nn.Conv2d(channels, ngf, 3, padding=1)
        self.normalizer = CondInstanceNorm2dPlus(ngf, levels)
        self.end_conv = nn.Conv2d(ngf, channels, 3, padding=1)
        self.res1 = nn.ModuleList([CondResidualBlock(ngf, ngf, levels, act), CondResidualBlock(ngf, ngf, levels, act)])
        self.res2 = nn.ModuleList(
            [CondResidualBlock(ngf, wide, levels, act, down=True), CondResidualBlock(wide, wide, levels, act)]
        )
        self.res3 = nn.ModuleList(
            [CondResidualBlock(wide, wide, levels, act, down=True, dilation=2),
             CondResidualBlock(wide, wide, levels, act, dilation=2)]
        )
        self.res4 = nn.ModuleList(
            [CondResidualBlock(wide, wide, levels, act, down=True, dilation=4),
             CondResidualBlock(wide, wide, levels, act, dilation=4)]
        )
        self.refine1 = CondRefineBlock([wide], wide, levels, act, start=True)
        self.refine2 = CondRefineBlock([wide, wide], wide, levels, act)
        self.refine3 = CondRefineBlock([wide, wide], ngf, levels, act)
        self.refine4 = CondRefineBlock([ngf, ngf], ngf, levels, act, end=True)

    @property
    def sigmas(self) -> torch.Tensor:
        """The network's levels in its index order (y = 0 the largest), float64 on the CPU."""
        return self._sigmas

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CondRefineNetDilated:
        """Build from the official YAML config as a dict (keys 'model' and 'data')."""
        model, data = config["model"], config["data"]
        if data.get("logit_transform", False):
            raise ValueError("data.logit_transform=True is not supported: bench data are not an affine image of logits")
        return cls(
            ngf=model["ngf"],
            num_classes=model["num_classes"],
            sigma_begin=model["sigma_begin"],
            sigma_end=model["sigma_end"],
            channels=data["channels"],
            image_size=data["image_size"],
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score s(x, sigmas[y]) = net(x, y); x [N, C, H, W] in [0, 1], y [N] int64 (L398-417)."""
        check_level_input(x, y, self.channels, self.num_levels)
        h = self.begin_conv(2 * x - 1.0)
        layer1 = self._run(self.res1, h, y)
        layer2 = self._run(self.res2, layer1, y)
        layer3 = self._run(self.res3, layer2, y)
        layer4 = self._run(self.res4, layer3, y)

        ref = self.refine1([layer4], y, layer4.shape[2:])
        ref = self.refine2([layer3, ref], y, layer3.shape[2:])
        ref = self.refine3([layer2, ref], y, layer2.shape[2:])
        ref = self.refine4([layer1, ref], y, layer1.shape[2:])
        return self.end_conv(self.act(self.normalizer(ref, y)))

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, y)
        return h
