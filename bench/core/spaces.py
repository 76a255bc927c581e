"""Spaces: the coordinates a sampler works in, the grids each takes, and a family's denoiser viewed there.

A sampler's spec names its space (bench.samplers.spec.SamplerSpec.space); a family offers the spaces whose
view its denoiser supports (bench.families.spec.FamilySpec.spaces). Each space fixes its kind of grid:

=================  ==============================  ===================================================
space              grids                           what the sampler calls, on which grid
=================  ==============================  ===================================================
discrete           time grids (time_grids.GRIDS)   the family's denoiser on ascending step indices
learned_variance   time grids                      the same, its Prediction carrying iDDPM's variance
ddgm               time grids                      the same, with DDGM's noise law
sigma              sigma grids (EDM Table 1)       D(x; sigma) (denoiser.as_sigma), descending sigmas
levels             sigma grids                     the score on K levels of the grid, indices 0..K-1
vp_time            ``vp_sde``                      the VP-SDE score (its own, else VPTimeScore), times 1..0
vp_discrete        ``vp_sde``                      the same, for samplers of the VP SDE's DDPM discretisation
=================  ==============================  ===================================================

A score-SDE network's own time score runs on the model's SDE (VP or sub-VP, bench.core.vp_schedule), whose
beta(t) the ``vp_sde`` grid options must match.

``GRID_NAMES`` is the one list of grid names: the config's check of a sampler's grid reads it (the schema
leaves grid names to it), and each name belongs to one kind (``grid_kind``) with its grid_options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bench.core.denoiser import VPTimeScore, as_sigma
from bench.core.options import option_parameters
from bench.core.sigma_grids import SIGMA_GRID_FUNCTIONS, sigma_grid
from bench.core.time_grids import GRIDS, MOMENT_GRIDS, grid_options, time_grid
from bench.core.vp_schedule import SAMPLING_EPS, VPSDE

if TYPE_CHECKING:
    from bench.methods.analytic import BoundTerms

# score-SDE's VP SDE times linspace(1, eps, K) and 0 (grid_options beta_min, beta_max, eps).
VP_SDE_GRID = "vp_sde"


@dataclass(frozen=True)
class GridKind:
    """A kind of grid: its names, what errors call it, and name -> annotation of each of its grid_options."""

    what: str
    names: tuple[str, ...]
    option_types: Callable[[str], dict[str, Any]]


def _sigma_grid_options(grid: str) -> dict[str, Any]:
    return option_parameters(SIGMA_GRID_FUNCTIONS[grid], exclude=("N", "denoiser"))


def _vp_sde_grid_options(grid: str) -> dict[str, Any]:
    return {**option_parameters(VPSDE), **option_parameters(VPSDE.time_grid, exclude=("self", "K"))}


TIME_GRIDS = GridKind("time grid", GRIDS, grid_options)
SIGMA_GRIDS = GridKind("sigma grid", tuple(SIGMA_GRID_FUNCTIONS), _sigma_grid_options)
VP_SDE_GRIDS = GridKind("VP SDE grid", (VP_SDE_GRID,), _vp_sde_grid_options)
GRID_KINDS = (TIME_GRIDS, SIGMA_GRIDS, VP_SDE_GRIDS)
GRID_NAMES = tuple(name for kind in GRID_KINDS for name in kind.names)


def grid_kind(grid: str) -> GridKind:
    """The kind of grid named ``grid``; a name outside GRID_NAMES is an error listing them."""
    for kind in GRID_KINDS:
        if grid in kind.names:
            return kind
    raise ValueError(f"grid {grid!r} is not one of {list(GRID_NAMES)}")


def _time_view(
    denoiser, grid: str, K: int, options: dict, *, gamma, bound_terms, variance
) -> tuple[object, torch.Tensor]:
    # Grids chosen from the moments realise the optimal trajectory of the sampler's variance.
    if grid in MOMENT_GRIDS:
        options = {**options, "bound_terms": bound_terms, "variance": variance()}
    realised = time_grid(grid, denoiser.schedule.T, K, alpha_bars=denoiser.alpha_bars, gamma=gamma, **options)
    return denoiser, realised


def _sigma_view(denoiser, grid: str, K: int, options: dict, **moments) -> tuple[object, torch.Tensor]:
    view = as_sigma(denoiser)
    return view, sigma_grid(grid, K, denoiser=view, **options)


def _level_view(denoiser, grid: str, K: int, options: dict, **moments) -> tuple[object, torch.Tensor]:
    # The levels span the model's own [sigma_min, sigma_max] unless grid_options say otherwise (NCSN's are the model's).
    view = as_sigma(denoiser)
    options = {"sigma_min": view.sigma_min, "sigma_max": view.sigma_max, **options}
    levels = sigma_grid(grid, K, denoiser=view, **options)[:-1].flip(0)
    return denoiser.with_levels(levels), torch.arange(K)


def _vp_time_view(denoiser, grid: str, K: int, options: dict, **moments) -> tuple[object, torch.Tensor]:
    sde = VPSDE(**{k: v for k, v in options.items() if k in ("beta_min", "beta_max")})
    # A denoiser with its own VP-time score (score-SDE's networks) is read there, not through D(x; sigma).
    own = getattr(denoiser, "as_vp_time_score", None)
    view = own(sde) if own is not None else VPTimeScore(as_sigma(denoiser), sde)
    times = sde.time_grid(K, options.get("eps", SAMPLING_EPS))
    view.check_times(times[:-1])
    return view, times


def _visited_levels(view, grid: torch.Tensor) -> torch.Tensor:
    return view.sigmas[grid].flip(0)


def _as_built(view, grid: torch.Tensor) -> torch.Tensor:
    return grid


@dataclass(frozen=True)
class Space:
    """A sampler's coordinates: its kind of grid, ``view(denoiser, grid, K, grid_options, *, gamma,
    bound_terms, variance)`` -> (what the sampler calls, the grid it is given), and ``realised(view, grid)``,
    the grid as the shard records it (a level sampler's levels in the order visited, descending sigmas)."""

    name: str
    grids: GridKind
    view: Callable[..., tuple[object, torch.Tensor]]
    realised: Callable[[object, torch.Tensor], torch.Tensor] = _as_built


SPACES: dict[str, Space] = {
    s.name: s
    for s in (
        Space("discrete", TIME_GRIDS, _time_view),
        Space("learned_variance", TIME_GRIDS, _time_view),
        Space("ddgm", TIME_GRIDS, _time_view),
        Space("sigma", SIGMA_GRIDS, _sigma_view),
        Space("levels", SIGMA_GRIDS, _level_view, _visited_levels),
        Space("vp_time", VP_SDE_GRIDS, _vp_time_view),
        Space("vp_discrete", VP_SDE_GRIDS, _vp_time_view),
    )
}


def view_for(
    space: str,
    denoiser,
    grid: str,
    K: int,
    grid_options: dict,
    *,
    gamma: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    variance: Callable[[], str],
) -> tuple[object, torch.Tensor]:
    """(what a sampler of ``space`` calls, its grid) for K steps of grid ``grid`` on a family's denoiser.

    ``gamma`` and ``bound_terms`` are the model's moments and ``variance()`` the sampler's trajectory
    variance, read only on the grids chosen from the moments (time_grids.MOMENT_GRIDS).
    """
    return SPACES[space].view(denoiser, grid, K, grid_options, gamma=gamma, bound_terms=bound_terms, variance=variance)
