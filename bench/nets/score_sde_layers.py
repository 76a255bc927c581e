"""Layers of score_sde_pytorch's NCSN++ / DDPM++ / DDPM networks (Song et al. 2021), our own code.

Parameter names, shapes and registration order are those of yang-song/score_sde_pytorch @cb1f359f
(models/layers.py, models/layerspp.py, models/up_or_down_sampling.py), so that the released
checkpoint_N.pth files load strictly; the arithmetic follows the same files, line by line where the
order of floating-point operations matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# score_sde models/layers.py L29-41 (get_act): the names a config's model.nonlinearity may take.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
    "swish": nn.SiLU,
}
# score_sde layers.py L562/L625 and layerspp.py L67/L173/L219: every GroupNorm uses eps 1e-6.
GROUP_NORM_EPS = 1e-6


def activation(name: str) -> nn.Module:
    """The activation module a score_sde config's ``nonlinearity`` names (models/layers.py L29)."""
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"nonlinearity {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def pp_groups(channels: int) -> int:
    """NCSN++'s GroupNorm group count, min(C // 4, 32) (layerspp.py L67, L173, L219; ncsnpp.py L194)."""
    return min(channels // 4, 32)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=GROUP_NORM_EPS)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    """DDPM's 3x3 convolution (layers.py L118), with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    """DDPM's 1x1 convolution (layers.py L100), with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """DDPM's sinusoidal embedding [sin(t w_i), cos(t w_i)], w_i = max_positions^(-i / (dim/2 - 1)) (layers.py L515)."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be one-dimensional [N], got shape {list(timesteps.shape)}")
    half = dim // 2
    rate = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -rate)
    emb = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W s), cos(2 pi W s)] of s = log sigma (paper App. C.1; layerspp.py L32).

    W ~ N(0, scale^2) is a parameter that is never trained (requires_grad False, layerspp.py L37), so it
    is in the state_dict but not in the EMA's shadow parameters.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_proj = x[:, None] * self.W[None, :] * 2 * np.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class NIN(nn.Module):
    """Per-pixel dense layer y = x W + b over channels, W stored [in, out] (layers.py L546)."""

    def __init__(self, in_dim: int, num_units: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, num_units))
        self.b = nn.Parameter(torch.zeros(num_units))
        nn.init.xavier_uniform_(self.W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("abcd,de->abce", x.permute(0, 2, 3, 1), self.W) + self.b
        return y.permute(0, 3, 1, 2)


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, scaled by C^-1/2 (layers.py L558; layerspp.py L62).

    DDPM's block uses 32 groups and a plain residual; NCSN++'s uses min(C/4, 32) groups and, with
    skip_rescale, divides the residual sum by sqrt(2).
    """

    def __init__(self, channels: int, num_groups: int, skip_rescale: bool = False) -> None:
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, num_groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(c) ** (-0.5))
        w = F.softmax(w.reshape(b, height, width, height * width), dim=-1)
        w = w.reshape(b, height, width, height, width)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


def fir_kernel(k: Sequence[float], gain: float) -> np.ndarray:
    """The 2-D FIR filter outer(k, k) / sum, times gain, in float32 (up_or_down_sampling.py L181)."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    k /= np.sum(k)
    return k * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Per channel: insert up-1 zeros after each pixel, pad (negative crops), convolve with kernel, keep every down-th.

    The same padding on both axes, and a true convolution (kernel flipped), as StyleGAN2's upfirdn2d
    that score_sde calls (op/upfirdn2d.py L145, L159).
    """
    n, c, height, width = x.shape
    flat = x.reshape(n * c, 1, height, width)
    if up > 1:
        spread = flat.new_zeros(n * c, 1, height * up, width * up)
        spread[:, :, ::up, ::up] = flat
        flat = spread
    flat = F.pad(flat, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, [0, 1]).to(flat)[None, None]
    out = F.conv2d(flat, weight, stride=down)
    return out.reshape(n, c, out.shape[-2], out.shape[-1])


def upsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR upsampling by ``factor`` with filter k scaled to gain factor^2 (up_or_down_sampling.py L195)."""
    kernel = fir_kernel(k, factor**2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, torch.from_numpy(kernel), up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR downsampling by ``factor`` with filter k (up_or_down_sampling.py L227)."""
    kernel = fir_kernel(k, 1)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, torch.from_numpy(kernel), down=factor, pad=((p + 1) // 2, p // 2))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR filter then a stride-``factor`` valid convolution with w, padded once (up_or_down_sampling.py L144)."""
    kernel = fir_kernel(k, 1)
    p = (kernel.shape[0] - factor) + (w.shape[-1] - 1)
    x = upfirdn2d(x, torch.from_numpy(kernel), pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor, padding=0)


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling by pixel repetition (up_or_down_sampling.py L59)."""
    _, c, height, width = x.shape
    x = x.reshape(-1, c, height, 1, width, 1).repeat(1, 1, 1, factor, 1, factor)
    return x.reshape(-1, c, height * factor, width * factor)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling over factor x factor blocks (up_or_down_sampling.py L66)."""
    _, c, height, width = x.shape
    x = x.reshape(-1, c, height // factor, factor, width // factor, factor)
    return x.mean(dim=(3, 5))


class FIRDownConv2d(nn.Module):
    """StyleGAN2's fused FIR-downsample + 3x3 stride-2 convolution (up_or_down_sampling.Conv2d, down=True)."""

    def __init__(self, in_ch: int, out_ch: int, fir_kernel: Sequence[float], kernel: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        nn.init.xavier_uniform_(self.weight)
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_downsample_2d(x, self.weight, self.fir_kernel) + self.bias.reshape(1, -1, 1, 1)


def _no_fused_upsample_conv() -> NotImplementedError:
    # score_sde up_or_down_sampling.py L126 reverses the kernel with w[..., ::-1, ::-1], which PyTorch
    # refuses (negative slice step), so the official port cannot run this layer; no released config uses it.
    return NotImplementedError(
        "a FIR upsampling convolution (fir=True with resblock_type='ddpm' or progressive='residual') "
        "cannot run in score_sde_pytorch itself (up_or_down_sampling.py L126) and no released checkpoint "
        "uses one; use fir=False or resblock_type='biggan' with progressive in ('none', 'output_skip')"
    )


class UpsamplePP(nn.Module):
    """NCSN++'s upsampling (layerspp.py L94): nearest (+3x3 conv), or FIR without a convolution."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if fir and with_conv:
            raise _no_fused_upsample_conv()
        if with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        self.fir = fir
        self.with_conv = with_conv
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return upsample_2d(x, self.fir_kernel, factor=2)
        _, _, height, width = x.shape
        # layerspp.py L117 passes 'nearest' as interpolate's scale_factor, which PyTorch refuses; no released
        # config reaches it. Nearest is what it means, and what DDPM's Upsample does (layers.py L593).
        h = F.interpolate(x, (height * 2, width * 2), mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class DownsamplePP(nn.Module):
    """NCSN++'s downsampling (layerspp.py L129): FIR (+fused conv), or right/bottom-padded stride-2 conv / avg-pool."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRDownConv2d(in_ch, out_ch, fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir = fir
        self.with_conv = with_conv
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_kernel, factor=2)
        if self.with_conv:
            # DDPM emulates TF's 'SAME' padding for stride 2: one extra row and column after the image.
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class Combine(nn.Module):
    """NCSN++'s input-skip combiner: 1x1 conv of the pyramid, then concatenate or add (layerspp.py L44)."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat") -> None:
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine {method!r} is not one of ['cat', 'sum']")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class ResnetBlockDDPM(nn.Module):
    """DDPM's residual block (layers.py L619; layerspp.py L166 adds NCSN++ groups and skip_rescale).

    out = skip(x) + Conv_1(drop(act(GN(Conv_0(act(GN(x))) + Dense_0(act(temb)))))), divided by sqrt(2)
    with skip_rescale; skip is NIN_0 (or Conv_2 with conv_shortcut) when the channel count changes.
    """

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 groups: Callable[[int], int] = pp_groups) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, groups(in_ch))
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, groups(out_ch))
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.act = act
        self.out_ch = out_ch
        self.conv_shortcut = conv_shortcut
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """NCSN++'s BigGAN residual block, resampling inside the block (layerspp.py L212).

    With up/down, both branches are resampled right after the first activation (FIR or naive);
    the skip is the 1x1 Conv_2 whenever channels change or the block resamples.
    """

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, pp_groups(in_ch))
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.act = act
        self.up = up
        self.down = down
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.skip_rescale = skip_rescale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h
