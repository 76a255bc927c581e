"""Samplers: pure functions ``sample(denoiser, x_T, grid, *, noise, **options) -> x_0``.

Each module of this package declares its samplers' facts beside their functions, as ``SPEC`` or ``SPECS``
(bench.samplers.spec.SamplerSpec); the registry below gathers them, so adding a sampler is adding a module.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

from bench.core.time_grids import MOMENT_GRIDS
from bench.samplers.spec import SamplerSpec

# Modules of this package that hold what the samplers share rather than samplers.
_NOT_SAMPLERS = ("spec", "validation")

SAMPLER_SPECS: dict[str, SamplerSpec] = {}
SAMPLERS: dict[str, Callable] = {}


def register(spec: SamplerSpec) -> None:
    """Make ``spec`` known to the registry, plan, validation, DAG and perf; a name is registered once."""
    if spec.name in SAMPLER_SPECS and SAMPLER_SPECS[spec.name] is not spec:
        raise ValueError(f"sampler function {spec.name!r} is registered twice")
    SAMPLER_SPECS[spec.name] = spec
    SAMPLERS[spec.name] = spec.fn


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_SAMPLERS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        specs = getattr(module, "SPECS", ()) + ((module.SPEC,) if hasattr(module, "SPEC") else ())
        if not specs:
            raise ImportError(f"sampler module {module.__name__} declares no SPEC or SPECS")
        for spec in specs:
            register(spec)


_discover()


def get_spec(name: str) -> SamplerSpec:
    """The SamplerSpec registered as ``name``."""
    try:
        return SAMPLER_SPECS[name]
    except KeyError:
        raise ValueError(f"sampler function {name!r} is not one of {sorted(SAMPLERS)}") from None


def get_sampler(name: str) -> Callable:
    """The sampler function registered as ``name``."""
    return get_spec(name).fn


def coupled_block(sampler: dict) -> int:
    """How many consecutive samples (cell indices [b n, (b + 1) n)) the config entry ``sampler`` couples:
    PC's Langevin corrector takes its norms over a block (bench.samplers.pc.norm_block); others, 1."""
    return get_spec(sampler["fn"]).coupled_block(sampler.get("options", {}))


def nfe_per_sample(sampler: dict, K: int) -> int:
    """Network evaluations one sample of the config entry ``sampler`` costs with K steps (its spec's count)."""
    return get_spec(sampler["fn"]).nfe(K, sampler.get("options", {}))


def needs_moments(sampler: dict) -> bool:
    """Whether the config entry ``sampler`` reads Analytic-DPM's Gamma_n: as an input, for its bound or its grid."""
    uses_gamma = sampler.get("inputs", {}).get("gamma") == "moments" or sampler.get("nll") == "analytic"
    return uses_gamma or sampler["grid"] in MOMENT_GRIDS


def own_moments_size(sampler: dict, moments: dict) -> int | None:
    """The config entry ``sampler``'s own Monte-Carlo size M of Gamma_n, where it differs from the config's
    ``moments.M`` (None: it reads the model's one moments file)."""
    M = sampler.get("moments_M")
    return None if M is None or M == moments.get("M") else M


def trajectory_variance(sampler: dict) -> str:
    """The variance (time_grids.TRAJECTORY_VARIANCES) of the optimal trajectory that ``sampler`` visits.

    Analytic-DPM Table 1: each variance has its own optimal trajectory; a sampler whose spec says "option"
    visits that of its ``variance`` option.
    """
    spec = get_spec(sampler["fn"])
    if spec.trajectory_variance is None:
        have = sorted(n for n, s in SAMPLER_SPECS.items() if s.trajectory_variance is not None)
        raise ValueError(f"sampler function {sampler['fn']!r} has no optimal trajectory; {have} have")
    if spec.trajectory_variance == "option":
        return sampler.get("options", {}).get("variance", "beta")
    return spec.trajectory_variance


def zero_length_step_samplers() -> list[str]:
    """The sampler functions that run a repeated timestep as DDIM does (a zero-length step)."""
    return sorted(n for n, s in SAMPLER_SPECS.items() if s.zero_length_steps)


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
