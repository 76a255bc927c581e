"""score-SDE's port of the DDPM U-Net (Ho et al. 2020), state_dict-compatible with score_sde_pytorch's
``DDPM`` (models/ddpm.py @cb1f359f): one flat ``all_modules`` list plus the ``sigmas`` buffer.

Its keys differ from ermongroup/ddim's DDPM (bench.nets.ddpm_unet): the same network, another layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from torch import nn

from bench.nets.score_sde_layers import (
    AttnBlock,
    DownsamplePP,
    ResnetBlockDDPM,
    UpsamplePP,
    activation,
    conv3x3,
    group_norm,
    timestep_embedding,
)
from bench.nets.score_sde_ncsnpp import smld_sigmas

# score_sde models/layers.py L562, L625, L633 and ddpm.py L104: DDPM's GroupNorms have 32 groups.
DDPM_GROUPS = 32


def _ddpm_groups(_channels: int) -> int:
    return DDPM_GROUPS


class ScoreSdeDDPM(nn.Module):
    """DDPM U-Net: forward(x, labels) as score_sde's DDPM.forward (ddpm.py L110).

    labels feed the positional embedding (the DDPM step, or 999 t for continuous VP / sub-VP); with
    scale_by_sigma (the VE config, ddpm.py L174) the output is divided by sigmas[labels], float64 as
    upstream. Uncentered data (x in [0, 1]) is mapped to 2x - 1 first (ddpm.py L124).
    The defaults are configs/vp/ddpm/cifar10_continuous.py's.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = True,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
        scale_by_sigma: bool = False,
        nonlinearity: Literal["elu", "relu", "lrelu", "swish"] = "swish",
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
    ) -> None:
        super().__init__()
        if not conditional:
            # ddpm.py L58-71 builds its module list only when conditional: the unconditional model cannot be made.
            raise ValueError(
                "conditional=False is not supported: score_sde's DDPM (models/ddpm.py L58) needs conditional"
            )
        self.register_buffer("sigmas", smld_sigmas(sigma_min, sigma_max, num_scales))
        self.act = act = activation(nonlinearity)
        self.image_size = image_size
        self.num_channels = channels = num_channels
        self.centered = centered
        self.nf = nf
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.num_resolutions = num_resolutions = len(ch_mult)
        self.scale_by_sigma = scale_by_sigma
        all_resolutions = [image_size // (2**i) for i in range(num_resolutions)]
        resblock = partial(ResnetBlockDDPM, act=act, temb_dim=4 * nf, dropout=dropout, groups=_ddpm_groups)

        def attn_block(ch: int) -> AttnBlock:
            return AttnBlock(ch, num_groups=DDPM_GROUPS)

        modules: list[nn.Module] = [nn.Linear(nf, nf * 4), nn.Linear(nf * 4, nf * 4), conv3x3(channels, nf)]
        hs_c = [nf]
        in_ch = nf
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if all_resolutions[i_level] in self.attn_resolutions:
                    modules.append(attn_block(in_ch))
                hs_c.append(in_ch)
            if i_level != num_resolutions - 1:
                modules.append(DownsamplePP(in_ch=in_ch, with_conv=resamp_with_conv))
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        modules += [resblock(in_ch=in_ch), attn_block(in_ch), resblock(in_ch=in_ch)]
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resblock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if all_resolutions[i_level] in self.attn_resolutions:
                modules.append(attn_block(in_ch))
            if i_level != 0:
                modules.append(UpsamplePP(in_ch=in_ch, with_conv=resamp_with_conv))
        modules += [group_norm(in_ch, DDPM_GROUPS), conv3x3(in_ch, channels)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        expected = (self.num_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"x has shape {list(x.shape)}, the network takes [N, {', '.join(map(str, expected))}]")
        mods = iter(self.all_modules)
        temb = next(mods)(timestep_embedding(labels, self.nf))
        temb = next(mods)(self.act(temb))
        h = x if self.centered else 2 * x - 1.0

        hs = [next(mods)(h)]
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1]))

        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if i_level != 0:
                h = next(mods)(h)

        norm = next(mods)
        conv = next(mods)
        h = conv(self.act(norm(h)))
        if self.scale_by_sigma:
            h = h / self.sigmas[labels, None, None, None]
        return h
