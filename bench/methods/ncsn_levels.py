"""NCSN / NCSNv2's own networks (Song & Ermon 2019, 2020): a score on a fixed table of levels, indexed by level.

The network's data live in ``data_range`` = [lo, hi] (NCSNv2 with ``rescaled: false``: [0, 1]), bench data in
[-1, 1]: x_net = a x + b with a = (hi - lo) / 2, b = (hi + lo) / 2. A level sigma on x is a sigma on x_net and,
since p(x) = p_net(a x + b) a^d, score(x, sigma) = a s_net(a x + b, a sigma). The network only knows its own
levels, so a level off its table is refused rather than rounded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.core.denoiser import LevelScore, ScoreAsSigmaDenoiser, as_level, ascending_table, param_dtype
from bench.core.noise import NoiseSource

# How far (relative) a level may lie from a table entry and still be read as it: the table is float32.
LEVEL_RTOL = 1e-6


class NoiseConditionalScore:
    """score(x, sigma) = a s_net(a x + b, y(sigma)), y the index of a sigma in the network's own table.

    ``net_sigmas`` is the network's table in its order (NCSNv2: its ``sigmas`` buffer; NCSN: its config's float64
    table, as runners/anneal_runner.py L232-233 builds it; both descending), which
    defines y; ``sigmas`` is the same table on bench data, ascending (the ScoreFn protocol).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        net_sigmas: torch.Tensor,
        *,
        data_range: tuple[float, float] = (0.0, 1.0),
        rtol: float = LEVEL_RTOL,
    ):
        lo, hi = data_range
        if not hi > lo:
            raise ValueError(f"data_range={data_range!r} must be (lo, hi) with hi > lo")
        self.net = net
        self.scale = (hi - lo) / 2.0
        self.shift = (hi + lo) / 2.0
        table = torch.as_tensor(net_sigmas).detach().to("cpu", torch.float64) / self.scale
        order = torch.argsort(table)
        self.sigmas = ascending_table(table[order])
        self._net_index = order
        self.rtol = rtol
        self.nfe = 0
        self._dtype = param_dtype(net)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def table_position(self, sigma: float | torch.Tensor) -> int:
        """The position of level ``sigma`` (bench scale) in the ascending ``sigmas``; off-table levels are refused."""
        s = as_level(sigma)
        n = int(torch.argmin(torch.abs(torch.log(self.sigmas / s))))
        if abs(float(self.sigmas[n] / s) - 1.0) > self.rtol:
            raise ValueError(
                f"sigma={float(s)!r} is not one of the network's {len(self.sigmas)} levels (nearest "
                f"{float(self.sigmas[n])!r}, table [{self.sigma_min:g} .. {self.sigma_max:g}] on [-1, 1] data): "
                f"a noise-conditional network is defined on its own table only; sample it with K = "
                f"{len(self.sigmas)} levels of that range"
            )
        return n

    def level_index(self, sigma: float | torch.Tensor) -> int:
        """The network's own index y of level ``sigma`` (bench scale)."""
        return int(self._net_index[self.table_position(sigma)])

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        y = torch.full((x.shape[0],), self.level_index(sigma), dtype=torch.int64, device=x.device)
        out = self.net((self.scale * x + self.shift).to(self._dtype), y)
        self.nfe += 1
        return self.scale * out.to(x.dtype)

    def with_levels(self, sigmas: torch.Tensor) -> UniformStartLevels:
        """This score on the levels ``sigmas`` of its table, each read as the table's own value."""
        positions = [self.table_position(s) for s in ascending_table(sigmas)]
        return UniformStartLevels(self, self.sigmas[positions])

    def as_sigma_denoiser(self) -> ScoreAsSigmaDenoiser:
        """The range the level grids span (sigma grids clamp to it); its calls accept table levels only."""
        return ScoreAsSigmaDenoiser(self, self.sigma_min, self.sigma_max)


class UniformStartLevels(LevelScore):
    """A level table whose chain starts from uniform noise on the data range, as NCSN and NCSNv2 sample.

    NCSNv2 runners/ncsn_runner.py L397-400 (sampling.fid) and NCSN runners/anneal_runner.py L260 draw
    ``torch.rand`` on [0, 1] images (NCSNv2 then applies data_transform): on [-1, 1] data, 2 U - 1.
    """

    def prior(self, noise: NoiseSource, grid: torch.Tensor) -> torch.Tensor:
        return 2.0 * noise.latent_uniform() - 1.0
