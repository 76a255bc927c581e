"""A small residual MLP denoiser over flattened pixels, sized for 8x8 data on a CPU."""

from __future__ import annotations

import math

import torch
from torch import nn

# Matrix products of few rows sum in another order than those of many (torch 2.13 on one thread: at most
# 3 rows on an AVX-512 EPYC; on a Xeon with AMX, up to 10 rows at 256 inputs and 15 at 512 to 2048), so
# a row's output would depend on the size of its batch. Every product here gets at least this many rows,
# so that each row's output is the same bits whatever shares its call.
MIN_MATMUL_ROWS = 16


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(t w_i), cos(t w_i)] with w_i = 10000^(-i/(dim/2 - 1)) (Transformer / DDPM time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 silu(norm(h)) + E temb): pre-norm residual block with an additive time embedding."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
        """``rows`` picks each row's embedding from ``self.emb(temb)``: an index, or a slice that broadcasts."""
        # The sums land in the products' own buffers (a + b is b + a to the bit); without autograd the
        # activations overwrite their inputs too: fewer passes over fresh memory per block, the same values.
        inplace = not torch.is_grad_enabled()
        z = self.fc1(nn.functional.silu(self.norm(h), inplace=inplace))
        z += self.emb(temb)[rows]
        out = self.fc2(nn.functional.silu(z, inplace=inplace))
        out += h
        return out


class MLPDenoiser(nn.Module):
    """Maps (x [N,C,H,W], t [N]) to out_channels predictions per pixel, e.g. eps (and a variance head)."""

    def __init__(
        self,
        *,
        channels: int = 1,
        image_size: int = 8,
        width: int = 512,
        depth: int = 4,
        emb_dim: int = 128,
        out_channels: int | None = None,
    ):
        super().__init__()
        if width < 1 or depth < 1 or emb_dim < 4 or emb_dim % 2:
            raise ValueError(f"MLP width={width}, depth={depth} must be >= 1 and emb_dim={emb_dim} even and >= 4")
        self.channels = channels
        self.image_size = image_size
        self.out_channels = out_channels or channels
        self.emb_dim = emb_dim
        d_in = channels * image_size * image_size
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.out_channels * image_size * image_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.training:
            # Per-row embeddings: the weight gradients sum over the batch exactly as they always did.
            times, rows = t, slice(None)
        else:
            # Sampling calls the network with one t for the whole batch: the time MLP and each block's
            # emb Linear run once per distinct t, and their rows are shared out. One comparison finds the
            # common case; unique() sorts the batch's times, which cost 1% of a call of the embedded MLP.
            if bool((t == t[0]).all()):
                times, rows = t[:1], slice(0, 1)
            else:
                times, index = torch.unique(t, return_inverse=True)
                rows = _pad_rows(index)
        temb = self.time_mlp(sinusoidal_embedding(_pad_rows(times), self.emb_dim))
        h = self.inp(_pad_rows(x.flatten(1)))
        for block in self.blocks:
            h = block(h, temb, rows)
        out = self.out(nn.functional.silu(self.out_norm(h), inplace=not torch.is_grad_enabled()))[:n]
        return out.view(n, self.out_channels, self.image_size, self.image_size)


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x with copies of its first row appended up to MIN_MATMUL_ROWS rows (at least one row)."""
    if len(x) >= MIN_MATMUL_ROWS:
        return x
    return torch.cat([x, x[:1].expand(MIN_MATMUL_ROWS - len(x), *x.shape[1:])])
