"""Samplers: pure functions ``sample(denoiser, x_T, grid, *, noise, **options) -> x_0``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bench.samplers import analytic_ddim, analytic_ddpm, ddgm, ddim, ddpm, edm, edm_general, iddpm, langevin, pc, vp_sde

SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm.sample,
    "ddim": ddim.sample,
    "analytic_ddpm": analytic_ddpm.sample,
    "analytic_ddim": analytic_ddim.sample,
    "edm_euler": edm.euler,
    "edm_heun": edm.heun,
    "edm_stochastic": edm.stochastic,
    "edm_general": edm_general.edm_general,
    "iddpm": iddpm.sample,
    "ddgm": ddgm.ddgm,
    "ddgm_ddim": ddgm.ddgm_ddim,
    "langevin": langevin.sample,
    "pc": pc.sample,
    "vp_euler_maruyama": vp_sde.euler_maruyama,
    "vp_probability_flow": vp_sde.probability_flow,
}
# Samplers over a score function's table of noise levels (bench.methods.ncsn.ScoreFn): their grid is the
# table's indices, and the config's sigma grid with K entries becomes the table itself.
LEVEL_SAMPLERS = ("langevin", "pc")
# Samplers in EDM's sigma space (bench.methods.edm.SigmaDenoiser), on a descending sigma grid ending at 0.
SIGMA_SAMPLERS = ("edm_euler", "edm_heun", "edm_stochastic", "edm_general")
# Samplers that take the sigma range of their grid (bench.methods.edm.sigma_range) as the options sigma_min,
# sigma_max and epsilon_s: EDM's general sampler solves its vp schedule from it (generate.py L99-100).
GRID_RANGE_SAMPLERS = ("edm_general",)
# Samplers of score-SDE's VP SDE in its own time t (bench.methods.vpsde.VPTimeScore), on the `vp_sde` time grid.
VP_SDE_SAMPLERS = ("vp_euler_maruyama", "vp_probability_flow")


def coupled_block(sampler: dict) -> int:
    """How many consecutive samples (cell indices [b n, (b + 1) n)) the config entry ``sampler`` couples:
    PC's Langevin corrector takes its norms over a block (bench.samplers.pc.norm_block); others, 1."""
    return pc.norm_block(sampler.get("options", {})) if sampler["fn"] == "pc" else 1


def get_sampler(name: str) -> Callable:
    """The sampler function registered as ``name``."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler function {name!r} is not one of {sorted(SAMPLERS)}") from None


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a run of sampler ``name`` uses: its keyword defaults, overridden by ``options``.

    The record of a cell's conventions (e.g. Analytic-DDIM's eps_from_clipped_x0) whether or not the config
    names them; inputs from artifacts (``gamma``) and the noise source are left out.
    """
    params = inspect.signature(get_sampler(name)).parameters.values()
    defaults = {
        p.name: p.default
        for p in params
        if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name not in ("noise", "gamma")
    }
    return {**defaults, **{k: v for k, v in options.items() if k != "gamma"}}
