"""The config's sampler entries checked against their specs, before any job runs.

bench.config calls these in its order of checks and raises each SamplerConfigError as its ConfigError;
every message names the config key, the bad value and what is allowed.
"""

from __future__ import annotations

import inspect

from bench.core.options import OptionError, check_options, check_values, option_parameters, required_options
from bench.core.sigma_grids import sigma_grid
from bench.core.spaces import GRID_NAMES, SPACES, TIME_GRIDS, VP_SDE_GRID, grid_kind
from bench.core.time_grids import MOMENT_GRIDS, REPEATING_GRIDS, check_time_grid, has_repeats, time_grid
from bench.core.vp_schedule import VPSDE
from bench.samplers import (
    SAMPLER_SPECS,
    SAMPLERS,
    get_spec,
    needs_moments,
    trajectory_variance,
    zero_length_step_samplers,
)


class SamplerConfigError(ValueError):
    """A sampler entry that cannot run: the message names the config key, the value and what is allowed."""


def _options_error(key: str, err: OptionError) -> SamplerConfigError:
    return SamplerConfigError(f"config key '{key}.{err.option}': {err}")


def check_entry(name: str, sampler: dict) -> None:
    """``samplers.<name>``: a registered function on a grid of its space, with grid options that grid takes."""
    fn = sampler["fn"]
    if fn not in SAMPLER_SPECS:
        raise SamplerConfigError(
            f"config key 'samplers.{name}.fn': value {fn!r} is not allowed; allowed: {sorted(SAMPLERS)}"
        )
    if sampler["grid"] not in GRID_NAMES:
        raise SamplerConfigError(
            f"config key 'samplers.{name}.grid': value {sampler['grid']!r} is not allowed; allowed: {list(GRID_NAMES)}"
        )
    spec = get_spec(fn)
    grids = SPACES[spec.space].grids
    if sampler["grid"] not in grids.names:
        raise SamplerConfigError(
            f"config key 'samplers.{name}.grid': value {sampler['grid']!r} is not a {grids.what}, which sampler "
            f"function {fn!r} needs; allowed: {list(grids.names)}"
        )
    check_grid_options(name, sampler)
    if spec.takes_grid_range:
        check_grid_range_sampler(name, sampler)


def check_grid_options(name: str, sampler: dict) -> None:
    """grid_options against the parameters of the grid's functions, past the step count and the model."""
    grid = sampler["grid"]
    kind = grid_kind(grid)
    options = sampler.get("grid_options", {})
    try:
        check_values(options, kind.option_types(grid), owner=f"{kind.what} {grid!r}")
    except OptionError as err:
        raise _options_error(f"samplers.{name}.grid_options", err) from None
    if grid == VP_SDE_GRID:
        # beta_min <= beta_max relates two options, which no annotation states.
        try:
            VPSDE(**{k: v for k, v in options.items() if k in option_parameters(VPSDE)})
        except ValueError as err:
            raise SamplerConfigError(f"config key 'samplers.{name}.grid_options': {err}") from None


def check_grid_range_sampler(name: str, sampler: dict) -> None:
    """A sampler that takes its grid's range (EDM's general sampler): the range is the grid's, and its
    options must pass the spec's own check (a sampler generate.py runs)."""
    options = sampler.get("options", {})
    from_grid = sorted({"sigma_min", "sigma_max", "epsilon_s"} & set(options))
    if from_grid:
        raise SamplerConfigError(
            f"config key 'samplers.{name}.options': {from_grid} are the grid's (its sigma range, generate.py "
            f"L87-100); give them in 'samplers.{name}.grid_options'"
        )
    check = get_spec(sampler["fn"]).check_options
    if check is not None:
        known = inspect.signature(check).parameters
        try:
            check(**{k: v for k, v in options.items() if k in known})
        except (TypeError, ValueError) as err:
            raise SamplerConfigError(f"config key 'samplers.{name}.options': {err}") from None
    # The range is read from grid_options (bench.core.sigma_grids.sigma_range), whose names check_grid_options checked.
    try:
        sigma_grid(sampler["grid"], 2, **sampler.get("grid_options", {}))
    except (TypeError, ValueError) as err:
        raise SamplerConfigError(f"config key 'samplers.{name}.grid_options': {err}") from None


def check_steps(name: str, sampler: dict, T: int, K: int, where: str) -> None:
    """K steps of a time grid on a chain of T steps; a grid with repeats only for zero-length-step samplers."""
    grid = sampler["grid"]
    if grid not in TIME_GRIDS.names:
        return
    try:
        check_time_grid(grid, T, K, **sampler.get("grid_options", {}))
    except ValueError as err:
        raise SamplerConfigError(f"config key '{where}' with sampler {name!r}: {err}") from None
    if grid not in REPEATING_GRIDS or not has_repeats(time_grid(grid, T, K)):
        return
    if not get_spec(sampler["fn"]).zero_length_steps:
        raise SamplerConfigError(
            f"config key '{where}' with sampler {name!r}: time grid {grid!r} repeats timesteps at "
            f"T={T}, K={K}, which only {zero_length_step_samplers()} run (as DDIM's zero-length step), "
            f"not {sampler['fn']!r}"
        )
    if "nll" in sampler:
        raise SamplerConfigError(
            f"config key '{where}' with sampler {name!r}: time grid {grid!r} repeats timesteps at "
            f"T={T}, K={K}; the variational bound (nll: {sampler['nll']}) has no term for a zero-length step"
        )


def check_inputs(name: str, sampler: dict, injected: dict[str, dict], *, has_moments: bool) -> None:
    """options and inputs against the function's keywords; a moment grid's trajectory and bound; the moments.

    ``injected``: keyword -> schema of each artifact the DAG can pass (the schema's samplers.*.inputs);
    ``has_moments``: whether the config estimates the Analytic-DPM moments.
    """
    _check_options(name, sampler, injected)
    if sampler["grid"] in MOMENT_GRIDS:
        try:
            variance = trajectory_variance(sampler)
        except ValueError as err:
            raise SamplerConfigError(f"config key 'samplers.{name}.fn' on grid {sampler['grid']!r}: {err}") from None
        if sampler.get("nll", variance) != variance:
            raise SamplerConfigError(
                f"config key 'samplers.{name}.nll': value {sampler['nll']!r} on grid {sampler['grid']!r}, whose "
                f"trajectory is the {variance!r} variance's: the bound must be that variance's"
            )
    if needs_moments(sampler) and not has_moments:
        raise SamplerConfigError(
            f"config key 'samplers.{name}': needs the Analytic-DPM moments, but the config has no 'moments' key"
        )
    if "moments_M" in sampler:
        if sampler.get("inputs", {}).get("gamma") != "moments":
            raise SamplerConfigError(
                f"config key 'samplers.{name}.moments_M': value {sampler['moments_M']!r}, but the sampler reads no "
                "Gamma_n (allowed only with inputs: {gamma: moments})"
            )
        if sampler["grid"] in MOMENT_GRIDS:
            # A moment grid's trajectory is shared by the cells of a (model, grid): it reads moments.M.
            raise SamplerConfigError(
                f"config key 'samplers.{name}.moments_M': value {sampler['moments_M']!r}; a sampler with its own M "
                f"may not visit a moment grid {sorted(MOMENT_GRIDS)} (those use moments.M)"
            )


def _check_options(name: str, sampler: dict, injected: dict[str, dict]) -> None:
    """``options`` and ``inputs`` against the sampler function's keyword-only parameters, past the protocol's noise."""
    fn, fn_name = get_spec(sampler["fn"]).fn, sampler["fn"]
    owner = f"sampler function {fn_name!r}"
    takes = [n for n in option_parameters(fn, keyword_only=True) if n in injected]
    inputs = sampler.get("inputs", {})
    for artifact in inputs:
        if artifact not in takes:
            raise SamplerConfigError(
                f"config key 'samplers.{name}.inputs.{artifact}': {owner} takes no input {artifact!r}; "
                f"allowed: {takes}"
            )
    try:
        check_options(fn, sampler.get("options", {}), owner=owner, exclude=("noise", *injected), keyword_only=True)
    except OptionError as err:
        raise _options_error(f"samplers.{name}.options", err) from None
    for artifact in required_options(fn, takes):
        if artifact not in inputs:
            raise SamplerConfigError(
                f"config key 'samplers.{name}.inputs': {owner} needs input {artifact!r}; "
                f"give inputs: {{{artifact}: {injected[artifact]['const']}}}"
            )


def check_coupled_blocks(samplers: dict[str, dict], used: set[str], n: int, size: int) -> None:
    """A sampler that couples blocks of samples (PC's Langevin norms) needs shards made of whole blocks."""
    for name in sorted(used):
        s = samplers[name]
        block = get_spec(s["fn"]).coupled_block(s.get("options", {}))
        if size % block and size < n:
            raise SamplerConfigError(
                f"config key 'sampling.shard_size': value {size} splits the blocks of {block} samples over which "
                f"sampler {name!r} ({s['fn']}) averages its corrector's norms (options.norm_block); use a multiple "
                f"of {block}, or at least sampling.n_samples = {n}"
            )

