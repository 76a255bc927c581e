"""Samplers: pure functions ``sample(denoiser, x_T, grid, *, noise, **options) -> x_0``."""

from __future__ import annotations

from collections.abc import Callable

from bench.samplers import analytic_ddim, analytic_ddpm, ddgm, ddim, ddpm, edm, iddpm

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm.sample,
    "ddim": ddim.sample,
    "analytic_ddpm": analytic_ddpm.sample,
    "analytic_ddim": analytic_ddim.sample,
    "edm_euler": edm.euler,
    "edm_heun": edm.heun,
    "edm_stochastic": edm.stochastic,
    "iddpm": iddpm.sample,
    "ddgm": ddgm.ddgm,
    "ddgm_ddim": ddgm.ddgm_ddim,
}


def get_sampler(name: str) -> Callable:
    """The sampler function registered as ``name``."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler function {name!r} is not one of {sorted(SAMPLERS)}") from None
