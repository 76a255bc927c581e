"""Likelihood of a VE / continuous-time score model by the probability-flow ODE, in bits/dim (score-SDE App. D.2).

In s = log sigma the VE probability-flow ODE is dx/ds = f(x, s) = -sigma^2 score(x, sigma)
(score-SDE Eq. 13 with g^2 = d sigma^2 / dt), and along it d log p_s(x(s)) / ds = -div f
(instantaneous change of variables), so

    log p_{sigma_min}(x) = log p_{sigma_max}(x(s_max)) + int_{s_min}^{s_max} div f(x(s), s) ds,

with p_{sigma_max} taken as the VE prior N(0, sigma_max^2 I) unless ``prior_log_prob`` is given.
The ODE is solved by torchdiffeq with one shared adaptive step size for the whole batch, so a
sample's value depends on its batch only within the solver tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import torch
from torchdiffeq import odeint

from bench.core.denoiser import ScoreFn, as_level
from bench.core.noise import NoiseSource
from bench.samplers.vp_sde import OdeMethod

ESTIMATORS = ("rademacher", "gaussian", "exact")
# torchdiffeq's adaptive Runge-Kutta solvers (the options below are theirs).
METHODS: tuple[str, ...] = get_args(OdeMethod)
FIRST_STEP = 1e-2  # of the log-sigma range
DEQUANTIZATIONS = ("none", "uniform")


def data_levels(x: torch.Tensor, max_level: int) -> torch.Tensor:
    """The integer levels k of data x = 2 k / max_level - 1 (bench.data.digits.levels_to_unit), checked."""
    k = torch.round((x + 1.0) / 2.0 * max_level)
    if torch.any((k < 0) | (k > max_level)) or torch.any(torch.abs(2.0 * k / max_level - 1.0 - x) > 1e-5):
        raise ValueError(f"data are not on the grid 2 k / {max_level} - 1, k = 0..{max_level}")
    return k


def uniform_dequantize(x: torch.Tensor, max_level: int, u: torch.Tensor) -> torch.Tensor:
    """y = 2 (k + u) / (max_level + 1) - 1: level k spread uniformly over its cell of width 2 / (max_level + 1)."""
    return 2.0 * (data_levels(x, max_level) + u) / (max_level + 1) - 1.0


def offset_bits(max_level: int | None) -> float:
    """log2((max_level + 1) / 2): bits/dim of the cell volume (2 / (max_level + 1))^d; 0 for continuous data."""
    return 0.0 if max_level is None else math.log2((max_level + 1) / 2.0)


def _divergence(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, probe: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), div f(x)) per sample: exact with d vector-Jacobian products, or Hutchinson's v^T (df/dx) v."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        if not out.requires_grad:
            raise ValueError(
                "the score function is not differentiable in x (does it run under torch.no_grad or "
                "inference_mode?): the PF-ODE divergence needs autograd"
            )
        if probe is not None:
            (vjp,) = torch.autograd.grad(out, x, probe)
            return out.detach(), (vjp * probe).flatten(1).sum(1)
        flat = out.flatten(1)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
            div = div + g.flatten(1)[:, i]
        return out.detach(), div


def ode_nll(
    score_fn: ScoreFn,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    estimator: str = "rademacher",
    dequantization: str = "none",
    max_level: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Per-sample -log p(x) in bits/dim by integrating [x, log p] along the PF-ODE (score-SDE Eq. 13, App. D.2).

    sigma_min / sigma_max default to the ends of ``score_fn.sigmas`` (the ODE starts at sigma_min
    with x itself, like score-SDE's start at t = eps). ``estimator``: "rademacher" or "gaussian"
    Hutchinson-Skilling probes (one fixed probe per sample for the whole solve), or "exact"
    (d backward passes per evaluation; small d only). Probes and dequantization noise come from
    each sample's seed (its NoiseSource draws of step 0 and step 1).

    Discrete data (``max_level`` = M, values x = 2 k / M - 1 for k = 0..M): with
    ``dequantization="uniform"`` the input is y = 2 (k + u) / (M + 1) - 1, u ~ U(0, 1)^d, a point
    in level k's cell of volume (2 / (M + 1))^d (the M + 1 cells tile [-1, 1], and each contains
    its level's value 2 k / M - 1), and

        bpd = -log2 p(y) / d + log2((M + 1) / 2)  >=  -log2 P(k) / d  (in expectation over u),

    the offset being score-SDE's ``7 - inverse_scaler(-1)`` = 7 bits for M = 255 on centred data.
    With ``dequantization="none"`` the density is evaluated at the level values themselves and the
    same offset is added (no bound). Continuous data: ``max_level=None``, offset 0.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"trace estimator {estimator!r} is not one of {list(ESTIMATORS)}")
    if dequantization not in DEQUANTIZATIONS:
        raise ValueError(f"dequantization {dequantization!r} is not one of {list(DEQUANTIZATIONS)}")
    if max_level is None and dequantization != "none":
        raise ValueError(f"dequantization={dequantization!r} needs the data's max_level (discrete data)")
    if max_level is not None and (not isinstance(max_level, int) or max_level < 1):
        raise ValueError(f"max_level={max_level!r} must be a positive integer or None")
    if method not in METHODS:
        raise ValueError(f"ODE method {method!r} is not one of the adaptive solvers {list(METHODS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"ODE tolerances rtol={rtol!r}, atol={atol!r} must be positive")
    lo = as_level(score_fn.sigmas[0] if sigma_min is None else sigma_min)
    hi = as_level(score_fn.sigmas[-1] if sigma_max is None else sigma_max)
    if not lo < hi:
        raise ValueError(f"sigma_min={float(lo)!r} must be below sigma_max={float(hi)!r}")
    x = x.to(torch.float64)
    noise = NoiseSource(seeds, tuple(x.shape[1:]), torch.float64, x.device)
    if dequantization == "uniform":
        x = uniform_dequantize(x, max_level, noise.uniform(0))
    probe = None
    if estimator == "gaussian":
        probe = noise.normal(1)
    elif estimator == "rademacher":
        probe = torch.where(noise.uniform(1) < 0.5, -1.0, 1.0).to(torch.float64)

    evaluations = 0

    def rhs(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal evaluations
        evaluations += 1
        sigma = torch.exp(s)
        dx, div = _divergence(lambda y: -(sigma**2) * score_fn(y, sigma), state[0], probe)
        return dx, div

    s_span = torch.stack([torch.log(lo), torch.log(hi)]).to(x.device)
    zeros = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    # torchdiffeq's automatic first step and its steps past the end would evaluate the score beyond
    # sigma_max (the drift is tiny at sigma_min, so the guessed first step is huge): pin both.
    options = {"first_step": FIRST_STEP * (s_span[1] - s_span[0]), "step_t": s_span[1:]}
    xs, delta = odeint(rhs, (x, zeros), s_span, rtol=rtol, atol=atol, method=method, options=options)
    x_T, delta_logp = xs[-1], delta[-1]
    if prior_log_prob is None:
        d = x_T[0].numel()
        prior = -0.5 * (x_T.flatten(1) ** 2).sum(1) / hi**2 - 0.5 * d * torch.log(2 * math.pi * hi**2)
    else:
        prior = prior_log_prob(x_T).to(torch.float64)
    dims = x[0].numel()
    offset = offset_bits(max_level)
    bpd = -(prior + delta_logp) / (dims * math.log(2.0)) + offset
    return {
        "bpd": bpd,
        "nfe": evaluations,
        "estimator": estimator,
        "dequantization": dequantization,
        "offset_bits": offset,
        "rtol": rtol,
        "atol": atol,
        "method": method,
        "sigma_min": float(lo),
        "sigma_max": float(hi),
    }
