"""DDPM U-Net (Ho et al. 2020, App. B), module tree of ermongroup/ddim `models/diffusion.py`.

Parameter names, registration order and shapes equal the official `Model`, so its released
state_dicts (DDPM CIFAR-10 conversion, DDIM CelebA-64) load with `strict=True`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32
# The TF original (and hence the converted checkpoint) normalises with eps 1e-6, not torch's 1e-5.
GROUPNORM_EPS = 1e-6


def ddpm_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoid (Vaswani et al. 2017, Sec. 3.5) as in DDPM: [sin | cos], freq_i =
    exp(-ln(10000) i / (half - 1))."""
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"embedding dim {dim!r} must be an even integer >= 4")
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [N], got shape {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    freqs = torch.exp(-math.log(10000.0) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _swish(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU x * sigmoid(x) (Ramachandran et al. 2017)."""
    return F.silu(x)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=GROUPNORM_EPS, affine=True)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv (`conv`)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only right/bottom by one (TF 'SAME'), or 2x2 average pool."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        # TF's SAME padding for an even input and stride 2 puts the single pad row/column at the
        # end; the converted weights were trained with that alignment.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    """Pre-activation residual block with an additive projected time embedding."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, softmax(q^T k / sqrt(C)) v, with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(n, c, height * width)
        k = self.k(h).reshape(n, c, height * width)
        v = self.v(h).reshape(n, c, height * width)
        logits = torch.einsum("nci,ncj->nij", q, k) * (c**-0.5)
        weights = torch.softmax(logits, dim=2)
        out = torch.einsum("nij,ncj->nci", weights, v).reshape(n, c, height, width)
        return x + self.proj_out(out)


class _Level(nn.Module):
    """One resolution level: `block`, `attn` and an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)


class _Middle(nn.Module):
    def __init__(self, channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_channels, dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h, temb)), temb)


class _TimeEmbedding(nn.Module):
    def __init__(self, ch: int, temb_ch: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.dense[1](_swish(self.dense[0](emb)))


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class DDPMUNet(nn.Module):
    """The DDPM epsilon-prediction U-Net (Ho et al. 2020), key-compatible with ermongroup/ddim."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_ch: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_ch", out_ch),
            ("ch", ch),
            ("num_res_blocks", num_res_blocks),
            ("image_size", image_size),
        ):
            _check_positive_int(name, value)
        if ch % GROUPS != 0:
            raise ValueError(f"ch {ch!r} must be a multiple of {GROUPS} (GroupNorm groups)")
        ch_mult = tuple(ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult must name at least one level, got ()")
        for mult in ch_mult:
            _check_positive_int("every ch_mult entry", mult)
        if image_size % (2 ** (len(ch_mult) - 1)) != 0:
            raise ValueError(
                f"image_size {image_size!r} must be divisible by 2**{len(ch_mult) - 1} "
                f"for {len(ch_mult)} levels"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout {dropout!r} must lie in [0, 1)")

        self.in_channels = in_channels
        self.image_size = image_size
        self.ch = ch
        self.num_res_blocks = num_res_blocks
        attn_at = {int(r) for r in attn_resolutions}
        temb_ch = 4 * ch
        num_levels = len(ch_mult)

        self.temb = _TimeEmbedding(ch, temb_ch)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)

        # Channel count of every tensor pushed on the skip stack, in push order.
        skip_channels = [ch]
        self.down = nn.ModuleList()
        block_in = ch
        res = image_size
        for level, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, temb_ch, dropout))
                block_in = ch * mult
                if res in attn_at:
                    attns.append(AttnBlock(block_in))
                skip_channels.append(block_in)
            down = _Level(blocks, attns)
            if level != num_levels - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                skip_channels.append(block_in)
                res //= 2
            self.down.append(down)

        self.mid = _Middle(block_in, temb_ch, dropout)

        # Built deepest-first like the forward pass, then stored shallow-first so `up.<level>`
        # matches `down.<level>` as in the official checkpoint.
        ups: list[_Level] = []
        for level in reversed(range(num_levels)):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                block_out = ch * ch_mult[level]
                blocks.append(
                    ResnetBlock(block_in + skip_channels.pop(), block_out, temb_ch, dropout)
                )
                block_in = block_out
                if res in attn_at:
                    attns.append(AttnBlock(block_in))
            up = _Level(blocks, attns)
            if level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                res *= 2
            ups.append(up)
        self.up = nn.ModuleList(reversed(ups))

        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DDPMUNet:
        """Build from an ermongroup/ddim YAML config as a dict with `model` and `data` sections."""
        for section in ("model", "data"):
            if section not in config:
                raise KeyError(f"config lacks the {section!r} section; has {sorted(config)}")
        model, data = config["model"], config["data"]
        model_type = model.get("type", "simple")
        if model_type != "simple":
            raise ValueError(
                f"config model.type {model_type!r} is not supported; only 'simple' is "
                "('bayesian' adds a learned logvar that no released checkpoint uses)"
            )
        return cls(
            in_channels=model["in_channels"],
            out_ch=model["out_ch"],
            ch=model["ch"],
            ch_mult=tuple(model["ch_mult"]),
            num_res_blocks=model["num_res_blocks"],
            attn_resolutions=tuple(model["attn_resolutions"]),
            dropout=model["dropout"],
            resamp_with_conv=model["resamp_with_conv"],
            image_size=data["image_size"],
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict eps(x_t, t) (Ho et al. 2020, Eq. 14); t is the 0-based step index, float [N]."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape [N, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
        emb = ddpm_timestep_embedding(t, self.ch).to(self.conv_in.weight.dtype)
        temb = self.temb(emb)

        hs = [self.conv_in(x)]
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(hs[-1], temb)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
                hs.append(h)
            if hasattr(down, "downsample"):
                hs.append(down.downsample(hs[-1]))

        h = self.mid(hs[-1], temb)

        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)

        return self.conv_out(_swish(self.norm_out(h)))
