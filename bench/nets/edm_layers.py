"""Building blocks shared by the EDM U-Nets (SongUNet, DhariwalUNet).

Parameter and buffer names, shapes and registration order follow NVlabs/edm
`training/networks.py`, so official state_dicts load strictly. Every layer casts its
weights to the input dtype, which lets a wrapper run an fp32 model in fp16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial weights for one of the four fan-based schemes used by EDM."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}; allowed: {', '.join(INIT_MODES)}")


def resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D resampling kernel [1, 1, K, K] = outer(f, f) / sum(f)^2 of a 1-D filter f."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"resample_filter must be a non-empty 1-D sequence, got {list(taps)!r}")
    return (torch.outer(f, f) / f.sum().square()).reshape(1, 1, f.numel(), f.numel())


class Linear(nn.Module):
    """Fully connected layer y = x W^T + b with EDM's parameter names and init options."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Conv2d(nn.Module):
    """Square conv with optional 2x up/down resampling through a registered FIR filter.

    kernel=0 gives a weightless resampler (only the `resample_filter` buffer). With
    fused_resample the filter is applied on the padded conv output (down) or input (up),
    as NCSN++'s residual encoder does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both up- and down-sample (up=True, down=True)")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(
            mode=init_mode, fan_in=in_channels * kernel**2, fan_out=out_channels * kernel**2
        )
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = nn.Parameter(weight_init(shape, **fans) * init_weight) if kernel else None
        has_bias = bool(kernel) and bias
        self.bias = (
            nn.Parameter(weight_init([out_channels], **fans) * init_bias) if has_bias else None
        )
        # Registered even though constant: official checkpoints carry it under this name.
        self.register_buffer(
            "resample_filter", resample_kernel(resample_filter) if up or down else None
        )

    def _upsample(self, x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
        # Gain 4 keeps the mean: each input pixel spreads over 4 output pixels.
        taps = (f * 4).tile([x.shape[1], 1, 1, 1])
        return F.conv_transpose2d(x, taps, groups=x.shape[1], stride=2, padding=padding)

    def _downsample(self, x: torch.Tensor, f: torch.Tensor, padding: int) -> torch.Tensor:
        taps = f.tile([x.shape[1], 1, 1, 1])
        return F.conv2d(x, taps, groups=x.shape[1], stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        fused = self.fused_resample and w is not None
        if fused and self.up:
            x = F.conv2d(self._upsample(x, f, w_pad + f_pad), w)
        elif fused and self.down:
            x = self._downsample(F.conv2d(x, w, padding=w_pad + f_pad), f, 0)
        else:
            if self.up:
                x = self._upsample(x, f, f_pad)
            if self.down:
                x = self._downsample(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with groups = min(num_groups, C // min_channels_per_group)."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1 or num_channels % self.num_groups:
            raise ValueError(
                f"GroupNorm cannot split num_channels={num_channels} into "
                f"{self.num_groups} groups of at least {min_channels_per_group} channels"
            )
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
        )


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_k(q^T k / sqrt(c)) over [batch*heads, c, positions], computed in float32."""
    scale = 1 / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k * scale).float())
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block with optional resampling and self-attention (DDPM++, NCSN++ and ADM).

    adaptive_scale=True gives ADM's scale/shift conditioning norm1(x)*(1+s)+b; otherwise the
    embedding projection is added before norm1. The qkv projection stores q, k, v
    interleaved per channel (channel = head*3*cph + c*3 + {q,k,v}), as the official code does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = {"init_weight": 0} if init_zero is None else init_zero
        init_attn = init if init_attn is None else init_attn
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = (
                num_heads if num_heads is not None else out_channels // channels_per_head
            )
            if self.num_heads < 1 or out_channels % self.num_heads:
                raise ValueError(
                    f"attention needs out_channels={out_channels} divisible into "
                    f"num_heads={self.num_heads} >= 1 heads"
                )
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(
            in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init
        )
        affine_out = out_channels * (2 if adaptive_scale else 1)
        self.affine = Linear(emb_channels, affine_out, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # A pure resampling skip has no weight unless a projection is requested.
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(
                in_channels,
                out_channels,
                kernel,
                up=up,
                down=down,
                resample_filter=resample_filter,
                **init,
            )

        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **init_attn)
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(self.norm1(x) * (scale + 1) + shift)
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (orig if self.skip is None else self.skip(orig))) * self.skip_scale

        if self.num_heads:
            heads = self.num_heads
            qkv = self.qkv(self.norm2(x)).reshape(x.shape[0] * heads, x.shape[1] // heads, 3, -1)
            q, k, v = qkv.unbind(2)
            a = torch.einsum("nqk,nck->ncq", attention_weights(q, k), v)
            x = (self.proj(a.reshape(x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x w_i), sin(x w_i)], w_i = max_positions^(-i/D).

    D = half - 1 with endpoint=True (DDPM++, last frequency exactly 1/max_positions) and
    D = half otherwise (ADM); half = num_channels // 2.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device)
        exponents = exponents / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2) (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16.0) -> None:
        super().__init__()
        # A buffer, not a parameter: fixed after init but part of every checkpoint.
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)
