"""Samplers: pure functions ``sample(denoiser, x_T, grid, *, noise, **options) -> x_0``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bench.samplers import analytic_ddim, analytic_ddpm, ddgm, ddim, ddpm, edm, edm_general, iddpm, langevin, pc, vp_sde
from bench.samplers.spec import PeerSpec, SamplerSpec

# The sampler functions' specs (each module will declare its own; this list gathers them).
VP_ODE_NFE = 200
SAMPLER_SPECS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("ddpm", ddpm.sample, "discrete", lambda K, o: K, trajectory_variance="option",
                    zero_length_steps=True,
                    peer=PeerSpec("DDPMScheduler", "even", {"variance": "beta", "clip_x0": True}, deterministic=False)),
        SamplerSpec("ddim", ddim.sample, "discrete", lambda K, o: K, zero_length_steps=True,
                    peer=PeerSpec("DDIMScheduler", "uniform", {"eta": 0.0, "clip_x0": False}, deterministic=True)),
        SamplerSpec("analytic_ddpm", analytic_ddpm.sample, "discrete", lambda K, o: K, takes_gamma=True,
                    trajectory_variance="analytic"),
        SamplerSpec("analytic_ddim", analytic_ddim.sample, "discrete", lambda K, o: K, takes_gamma=True,
                    trajectory_variance="analytic"),
        SamplerSpec("iddpm", iddpm.sample, "learned_variance", lambda K, o: K),
        SamplerSpec("ddgm", ddgm.ddgm, "ddgm", lambda K, o: K),
        SamplerSpec("ddgm_ddim", ddgm.ddgm_ddim, "ddgm", lambda K, o: K),
        # EDM Alg. 1 and 2 with K = N sigma steps: Heun's correction on all but the last step.
        SamplerSpec("edm_euler", edm.euler, "sigma", lambda K, o: K),
        SamplerSpec("edm_heun", edm.heun, "sigma", lambda K, o: 2 * K - 1),
        SamplerSpec("edm_stochastic", edm.stochastic, "sigma", lambda K, o: 2 * K - 1),
        # generate.py ablation_sampler: Euler N, 2nd order on all but the last step (default solver heun).
        SamplerSpec("edm_general", edm_general.edm_general, "sigma",
                    lambda K, o: K if o.get("solver", "heun") == "euler" else 2 * K - 1, takes_grid_range=True),
        # K noise levels: n_steps_each Langevin steps each, plus Tweedie's final denoising step (NCSN Alg. 1).
        SamplerSpec("langevin", langevin.sample, "levels",
                    lambda K, o: K * o.get("n_steps_each", 100) + int(o.get("denoise", False))),
        # K predictor steps, each after n_steps_each corrector steps (score-SDE Alg. 2).
        SamplerSpec("pc", pc.sample, "levels", lambda K, o: K * (1 + o.get("n_steps_each", 1)),
                    coupled_block=pc.norm_block),
        SamplerSpec("vp_euler_maruyama", vp_sde.euler_maruyama, "vp_time", lambda K, o: K),
        # Adaptive: no count is known before the solve (the shards record the measured NFE). A planning
        # assumption, not a measurement: VP_ODE_NFE solver evaluations, plus one for the denoising step.
        SamplerSpec("vp_probability_flow", vp_sde.probability_flow, "vp_time",
                    lambda K, o: VP_ODE_NFE + int(o.get("denoise", True))),
    )
}
SAMPLERS: dict[str, Callable] = {name: spec.fn for name, spec in SAMPLER_SPECS.items()}
LEVEL_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.space == "levels")
SIGMA_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.space == "sigma")
GRID_RANGE_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.takes_grid_range)
VP_SDE_SAMPLERS = tuple(n for n, s in SAMPLER_SPECS.items() if s.space == "vp_time")

def coupled_block(sampler: dict) -> int:
    """How many consecutive samples (cell indices [b n, (b + 1) n)) the config entry ``sampler`` couples:
    PC's Langevin corrector takes its norms over a block (bench.samplers.pc.norm_block); others, 1."""
    return SAMPLER_SPECS[sampler["fn"]].coupled_block(sampler.get("options", {}))


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
