"""Improved-DDPM U-Net (Nichol & Dhariwal 2021) with the module tree of openai/improved-diffusion.

Parameter names (nn.Sequential indices included), registration order and shapes equal the
official `UNetModel`, so its released state_dicts load with `strict=True`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32


def adm_timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding as in improved-diffusion: [cos | sin], freq_i = exp(-ln(P) i / half)."""
    if dim % 2 != 0 or dim < 2:
        raise ValueError(f"embedding dim {dim!r} must be an even integer >= 2")
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [N], got shape {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def scale_shift_norm(norm: nn.Module, h: torch.Tensor, emb_out: torch.Tensor) -> torch.Tensor:
    """Adaptive group norm (Nichol & Dhariwal 2021, Sec. 3 / ADM AdaGN): norm(h) * (1 + s) + b,
    where the first half of emb_out's channels is the scale s and the second the shift b."""
    scale, shift = torch.chunk(emb_out, 2, dim=1)
    return norm(h) * (1 + scale) + shift


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm (eps 1e-5) evaluated in at least float32, returned in the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Low-precision activations are normalised in float32 (the official fp16 recipe); float64
        # stays float64.
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = F.group_norm(
            x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps
        )
        return out.to(x.dtype)


def _zeroed(module: nn.Module) -> nn.Module:
    # The official init zeroes the last layer of every residual branch and the output conv, so a
    # fresh network starts as the identity on each branch and predicts zeros.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _EmbedBlock(nn.Module):
    """Marker for layers whose forward takes the conditioning embedding as a second input."""


class EmbedSequential(nn.Sequential):
    """nn.Sequential that hands the embedding to the layers that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _EmbedBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv (`conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op`) with symmetric padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(_EmbedBlock):
    """Residual block conditioned on the embedding by addition or by scale-shift norm."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        use_scale_shift_norm: bool,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zeroed(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            h = scale_shift_norm(self.out_layers[0], h, emb_out)
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head spatial self-attention with a fused Conv1d qkv laid out per head as [q|k|v]."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels {channels} are not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, kernel_size=1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        qkv = self.qkv(self.norm(x)).reshape(n * self.num_heads, 3 * c // self.num_heads, -1)
        q, k, v = torch.chunk(qkv, 3, dim=1)
        head_ch = c // self.num_heads
        # Scaling q and k by ch^-1/4 each (rather than the logits by ch^-1/2) is the official
        # order of operations; it keeps fp16 logits in range.
        scale = head_ch**-0.25
        logits = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)
        weights = torch.softmax(logits, dim=-1, dtype=softmax_dtype).type(logits.dtype)
        h = torch.einsum("bts,bcs->bct", weights, v).reshape(n, c, -1)
        return (x + self.proj_out(h)).reshape(n, c, *spatial)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ADMUNet(nn.Module):
    """improved-diffusion `UNetModel` (2-D, learned-conv resampling), key-compatible with it.

    `use_checkpoint` is accepted for signature compatibility and ignored: gradient checkpointing
    only trades memory for recomputation and changes no parameter or output value.
    `attention_resolutions` are downsample rates (1, 2, 4, ...), not pixel sizes.
    `time_offset` is added to the timestep input before its embedding (not a parameter): the convention
    of checkpoints trained on another index than the caller's, e.g. 1 for Analytic-DPM's CIFAR-10 models,
    whose network receives the 1-based chain index n = t + 1 (criterions/ddpm.py, inference/utils.py).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        num_heads: int = 1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        time_offset: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("model_channels", model_channels),
            ("out_channels", out_channels),
            ("num_res_blocks", num_res_blocks),
            ("num_heads", num_heads),
        ):
            _check_positive_int(name, value)
        if model_channels % GROUPS != 0:
            raise ValueError(
                f"model_channels {model_channels!r} must be a multiple of {GROUPS} "
                "(GroupNorm groups)"
            )
        channel_mult = tuple(channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level, got ()")
        for mult in channel_mult:
            _check_positive_int("every channel_mult entry", mult)
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        _check_positive_int("num_heads_upsample (or -1)", num_heads_upsample)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout {dropout!r} must lie in [0, 1)")

        self.in_channels = in_channels
        self.time_offset = float(time_offset)
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.num_levels = len(channel_mult)
        attn_at = {int(r) for r in attention_resolutions}
        emb_dim = 4 * model_channels

        def res_block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(in_channels, model_channels, kernel_size=3, padding=1))]
        )
        skip_channels = [model_channels]
        ch = model_channels
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != self.num_levels - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(
            res_block(ch, ch), AttentionBlock(ch, num_heads), res_block(ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * channel_mult[level])]
                ch = model_channels * channel_mult[level]
                if ds in attn_at:
                    layers.append(AttentionBlock(ch, num_heads_upsample))
                if level != 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            _zeroed(nn.Conv2d(ch, out_channels, kernel_size=3, padding=1)),
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Network output [N, out_channels, H, W]; t is the time the network sees (rescaled t)."""
        if (y is None) != (self.num_classes is None):
            need = "no y (unconditional)" if self.num_classes is None else "class labels y [N]"
            raise ValueError(f"model with num_classes={self.num_classes} needs {need}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape [N, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        factor = 2 ** (self.num_levels - 1)
        if x.shape[2] % factor != 0 or x.shape[3] % factor != 0:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be divisible by {factor} "
                f"for {self.num_levels} levels"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
        if self.time_offset:
            t = t + self.time_offset
        emb = self.time_embed(
            adm_timestep_embedding(t, self.model_channels).to(self.out[2].weight.dtype)
        )
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)

        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
