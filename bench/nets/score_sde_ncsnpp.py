"""score-SDE's NCSN++ / DDPM++ network (Song et al. 2021, App. H), state_dict-compatible with
score_sde_pytorch's ``NCSNpp`` (models/ncsnpp.py @cb1f359f): one flat ``all_modules`` list, in the
official order, plus the ``sigmas`` buffer.

NCSN++ and DDPM++ are the same class under different configs (bench.nets.score_sde_configs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import nn

from bench.nets.score_sde_layers import (
    AttnBlock,
    Combine,
    DownsamplePP,
    GaussianFourierProjection,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    UpsamplePP,
    activation,
    conv3x3,
    group_norm,
    pp_groups,
    timestep_embedding,
)

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("fourier", "positional")


def smld_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> torch.Tensor:
    """Geometric noise levels from sigma_max down to sigma_min, float64 (score_sde models/utils.py L50).

    Computed with numpy as the official code does, so the buffer is bit-equal to a checkpoint's.
    """
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if num_scales < 2:
        raise ValueError(f"num_scales must be >= 2, got {num_scales}")
    return torch.from_numpy(np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales)))


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> str:
    if value.lower() not in allowed:
        raise ValueError(f"{key} {value!r} is not one of {list(allowed)}")
    return value.lower()


class ScoreSdeNCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: forward(x, time_cond) as score_sde's NCSNpp.forward (ncsnpp.py L232).

    time_cond is sigma itself with the Fourier embedding (continuous VE), else the label the
    positional embedding reads (a noise-level index for VE, 999 t or the DDPM step for VP / sub-VP).
    With scale_by_sigma the output is divided by that sigma, or by sigmas[label] for positional
    (ncsnpp.py L377); the float64 ``sigmas`` buffer then makes a float64 output, as upstream.
    Uncentered data (centered=False: x in [0, 1]) is mapped to 2x - 1 first (ncsnpp.py L259).
    The defaults are configs/ve/cifar10_ncsnpp_continuous.py's.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = False,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        fir: bool = True,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: Literal["ddpm", "biggan"] = "biggan",
        progressive: Literal["none", "output_skip", "residual"] = "none",
        progressive_input: Literal["none", "input_skip", "residual"] = "residual",
        progressive_combine: Literal["cat", "sum"] = "sum",
        embedding_type: Literal["fourier", "positional"] = "fourier",
        fourier_scale: float = 16.0,
        scale_by_sigma: bool = True,
        nonlinearity: Literal["elu", "relu", "lrelu", "swish"] = "swish",
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
    ) -> None:
        super().__init__()
        self.register_buffer("sigmas", smld_sigmas(sigma_min, sigma_max, num_scales))
        # The config's noise table (the buffer holds a checkpoint's copy): what a discrete-time label indexes.
        self.sigma_min, self.sigma_max, self.num_scales = sigma_min, sigma_max, num_scales
        self.act = act = activation(nonlinearity)
        self.resblock_type = resblock_type = _check_choice("resblock_type", resblock_type, RESBLOCK_TYPES)
        self.progressive = progressive = _check_choice("progressive", progressive, PROGRESSIVE)
        self.progressive_input = progressive_input = _check_choice(
            "progressive_input", progressive_input, PROGRESSIVE_INPUT
        )
        self.embedding_type = embedding_type = _check_choice("embedding_type", embedding_type, EMBEDDING_TYPES)
        combine_method = _check_choice("progressive_combine", progressive_combine, ("cat", "sum"))
        self.image_size = image_size
        self.num_channels = channels = num_channels
        self.centered = centered
        self.nf = nf
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.num_resolutions = num_resolutions = len(ch_mult)
        self.conditional = conditional
        self.skip_rescale = skip_rescale
        self.scale_by_sigma = scale_by_sigma
        all_resolutions = [image_size // (2**i) for i in range(num_resolutions)]

        upsample = partial(UpsamplePP, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        downsample = partial(DownsamplePP, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        if progressive == "output_skip":
            self.pyramid_upsample = UpsamplePP(fir=fir, fir_kernel=fir_kernel, with_conv=False, in_ch=channels)
        if progressive_input == "input_skip":
            self.pyramid_downsample = DownsamplePP(fir=fir, fir_kernel=fir_kernel, with_conv=False, in_ch=channels)
        if resblock_type == "ddpm":
            resblock = partial(ResnetBlockDDPM, act=act, dropout=dropout, skip_rescale=skip_rescale, temb_dim=nf * 4)
        else:
            resblock = partial(ResnetBlockBigGAN, act=act, dropout=dropout, fir=fir, fir_kernel=fir_kernel,
                               skip_rescale=skip_rescale, temb_dim=nf * 4)

        def attn_block(ch: int) -> AttnBlock:
            return AttnBlock(ch, num_groups=pp_groups(ch), skip_rescale=skip_rescale)

        modules: list[nn.Module] = []
        if embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=nf, scale=fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            modules += [nn.Linear(embed_dim, nf * 4), nn.Linear(nf * 4, nf * 4)]

        # Encoder (ncsnpp.py L136-172): hs_c tracks the channels of each skip the decoder pops.
        modules.append(conv3x3(channels, nf))
        hs_c = [nf]
        in_ch = nf
        input_pyramid_ch = channels
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if all_resolutions[i_level] in self.attn_resolutions:
                    modules.append(attn_block(in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                modules.append(downsample(in_ch=in_ch) if resblock_type == "ddpm" else resblock(down=True, in_ch=in_ch))
                if progressive_input == "input_skip":
                    modules.append(Combine(dim1=input_pyramid_ch, dim2=in_ch, method=combine_method))
                    if combine_method == "cat":
                        in_ch *= 2
                elif progressive_input == "residual":
                    modules.append(DownsamplePP(in_ch=input_pyramid_ch, out_ch=in_ch, with_conv=True, fir=fir,
                                                fir_kernel=fir_kernel))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        in_ch = hs_c[-1]
        modules += [resblock(in_ch=in_ch), attn_block(in_ch), resblock(in_ch=in_ch)]

        # Decoder (ncsnpp.py L179-228).
        pyramid_ch = 0
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if all_resolutions[i_level] in self.attn_resolutions:
                modules.append(attn_block(in_ch))
            if progressive != "none":
                if i_level == num_resolutions - 1 or progressive == "output_skip":
                    modules.append(group_norm(in_ch, pp_groups(in_ch)))
                    out = channels if progressive == "output_skip" else in_ch
                    modules.append(conv3x3(in_ch, out))
                    pyramid_ch = out
                else:
                    modules.append(UpsamplePP(in_ch=pyramid_ch, out_ch=in_ch, with_conv=True, fir=fir,
                                              fir_kernel=fir_kernel))
                    pyramid_ch = in_ch
            if i_level != 0:
                modules.append(upsample(in_ch=in_ch) if resblock_type == "ddpm" else resblock(in_ch=in_ch, up=True))
        if progressive != "output_skip":
            modules += [group_norm(in_ch, pp_groups(in_ch)), conv3x3(in_ch, channels)]
        self.all_modules = nn.ModuleList(modules)

    def _embed(self, time_cond: torch.Tensor, mods: Iterator[nn.Module]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(temb, the sigma that scale_by_sigma divides by) from the conditioning input."""
        if self.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = next(mods)(torch.log(used_sigmas))
        else:
            used_sigmas = self.sigmas[time_cond.long()]
            temb = timestep_embedding(time_cond, self.nf)
        if not self.conditional:
            return None, used_sigmas
        temb = next(mods)(temb)
        return next(mods)(self.act(temb)), used_sigmas

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
        expected = (self.num_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x has shape {list(x.shape)}, the network takes [N, {', '.join(map(str, expected))}]")
        mods = iter(self.all_modules)
        temb, used_sigmas = self._embed(time_cond, mods)
        if not self.centered:
            x = 2 * x - 1.0

        input_pyramid = x if self.progressive_input != "none" else None
        hs = [next(mods)(x)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                h = next(mods)(hs[-1]) if self.resblock_type == "ddpm" else next(mods)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    input_pyramid = self.pyramid_downsample(input_pyramid)
                    h = next(mods)(input_pyramid, h)
                elif self.progressive_input == "residual":
                    input_pyramid = next(mods)(input_pyramid)
                    input_pyramid = self._skip_sum(input_pyramid, h)
                    h = input_pyramid
                hs.append(h)

        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if self.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    pyramid = self._norm_conv(h, mods)
                elif self.progressive == "output_skip":
                    pyramid = self.pyramid_upsample(pyramid) + self._norm_conv(h, mods)
                else:
                    pyramid = self._skip_sum(next(mods)(pyramid), h)
                    h = pyramid
            if i_level != 0:
                h = next(mods)(h) if self.resblock_type == "ddpm" else next(mods)(h, temb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self._norm_conv(h, mods)
        if self.scale_by_sigma:
            h = h / used_sigmas.reshape((x.shape[0], *([1] * len(x.shape[1:]))))
        return h

    def _norm_conv(self, h: torch.Tensor, mods: Iterator[nn.Module]) -> torch.Tensor:
        """conv(act(norm(h))) with the next two modules, taken in list order."""
        norm = next(mods)
        conv = next(mods)
        return conv(self.act(norm(h)))

    def _skip_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / np.sqrt(2.0) if self.skip_rescale else a + b
