"""EDM's general sampler (Karras et al. 2022, Sec. 3 and Fig. 2; NVlabs/edm generate.py ``ablation_sampler``).

It solves the probability-flow ODE of a noise schedule sigma(t) and a scaling s(t) in t (EDM Eq. 4),

    dx/dt = (sigma'(t)/sigma(t) + s'(t)/s(t)) x - sigma'(t) s(t)/sigma(t) D(x/s(t); sigma(t)),

with Euler's method or the 2nd-order Runge-Kutta method of parameter alpha (EDM Alg. 1 with
alpha = 1 is Heun), optionally with EDM Alg. 2's churn. The discretisation is the sigma grid
(bench.core.sigma_grids.sigma_grid: vp, ve, iddpm or edm, generate.py L102-119, already clamped and rounded to
the network's levels); its time steps are t_i = sigma^-1(sigma_i) and t_N = 0 (generate.py L146-147).

Who scales x_T: the caller gives it at noise level grid[0] in sigma space (``grid[0] * latent``),
as for EDM's other samplers; this function multiplies it by s(t_0) (generate.py L151).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from bench.core.noise import NoiseSource
from bench.core.sigma_grids import vp_betas
from bench.samplers.edm import _check_grid
from bench.samplers.spec import SamplerSpec

Solver = Literal["euler", "heun"]
Schedule = Literal["vp", "ve", "linear"]
Scaling = Literal["vp", "none"]

# sigma(t), sigma'(t) and sigma^-1(sigma) of one noise schedule, on Python floats (float64).
ScheduleFns = tuple[Callable[[float], float], Callable[[float], float], Callable[[float], float]]


def noise_schedule(schedule: Schedule, *, sigma_min: float, sigma_max: float, epsilon_s: float) -> ScheduleFns:
    """sigma(t), sigma'(t), sigma^-1 of EDM Table 1's schedules (generate.py L78-84, L121-134).

    vp: sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1) with beta_d, beta_min solved from
    [sigma_min, sigma_max] and epsilon_s (generate.py L99-100); ve: sigma(t) = sqrt(t); linear: sigma(t) = t.
    """
    if schedule == "vp":
        beta_d, beta_min = vp_betas(sigma_min, sigma_max, epsilon_s)

        def sigma(t: float) -> float:
            return math.sqrt(math.expm1(0.5 * beta_d * t * t + beta_min * t))

        def sigma_deriv(t: float) -> float:
            s = sigma(t)
            return 0.5 * (beta_min + beta_d * t) * (s + 1 / s)

        def sigma_inv(s: float) -> float:
            return (math.sqrt(beta_min**2 + 2 * beta_d * math.log1p(s * s)) - beta_min) / beta_d

        return sigma, sigma_deriv, sigma_inv
    if schedule == "ve":
        return math.sqrt, lambda t: 0.5 / math.sqrt(t), lambda s: s * s
    return (lambda t: t), (lambda t: 1.0), (lambda s: s)


def check_options(
    *,
    solver: str = "heun",
    schedule: str = "linear",
    scaling: str = "none",
    alpha: float = 1.0,
    epsilon_s: float = 1e-3,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> None:
    """Refuse option values and combinations generate.py would not run, naming what is allowed."""
    choices = (("solver", solver, Solver), ("schedule", schedule, Schedule), ("scaling", scaling, Scaling))
    for key, value, kind in choices:
        if value not in get_args(kind):
            raise ValueError(f"edm_general option {key}={value!r} is not one of {list(get_args(kind))}")
    if not 0 < alpha <= 1:
        raise ValueError(f"edm_general option alpha={alpha!r} must lie in (0, 1] (EDM Alg. 1's 2nd-order step)")
    if solver == "euler" and alpha != 1:
        raise ValueError(f"edm_general option alpha={alpha!r} applies to solver 'heun' only, not 'euler'")
    if not 0 < epsilon_s < 1:
        raise ValueError(f"edm_general option epsilon_s={epsilon_s!r} must lie in (0, 1)")
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"edm_general options S_churn={S_churn!r} and S_noise={S_noise!r} must be non-negative")
    if not 0 <= S_tmin <= S_tmax:
        raise ValueError(
            f"edm_general churn range S_tmin={S_tmin!r}, S_tmax={S_tmax!r} must satisfy 0 <= S_tmin <= S_tmax"
        )


def edm_general(
    denoiser,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    solver: Solver = "heun",
    schedule: Schedule = "linear",
    scaling: Scaling = "none",
    alpha: float = 1.0,
    epsilon_s: float = 1e-3,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> torch.Tensor:
    """generate.py ``ablation_sampler`` (L66-176): Euler (N NFE) or 2nd-order (2N - 1 NFE) steps in t of EDM Eq. 4.

    ``sigma_min``, ``sigma_max``, ``epsilon_s``: what the vp schedule's beta_d, beta_min are solved
    from (generate.py L99-100); the DAG passes the grid's own range (bench.core.sigma_grids.sigma_range), and
    None takes the grid's ends, which is that range for the vp, ve and edm grids of a network that
    does not round its sigmas. Churn as EDM Alg. 2: gamma_i = min(S_churn / N, sqrt(2) - 1) where
    S_tmin <= sigma(t_i) <= S_tmax; step i draws ``noise.normal(i)``, and only when gamma_i > 0.
    """
    check_options(
        solver=solver, schedule=schedule, scaling=scaling, alpha=alpha, epsilon_s=epsilon_s,
        S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise,
    )
    sigmas = _check_grid(grid).tolist()
    N = len(sigmas) - 1
    sigma, sigma_deriv, sigma_inv = noise_schedule(
        schedule,
        sigma_min=sigmas[-2] if sigma_min is None else sigma_min,
        sigma_max=sigmas[0] if sigma_max is None else sigma_max,
        epsilon_s=epsilon_s,
    )
    s, s_deriv = _scaling(scaling, sigma, sigma_deriv)

    def slope(x: torch.Tensor, t: float) -> torch.Tensor:
        """dx/dt of EDM Eq. 4 at (x, t) (generate.py L163, L173)."""
        sig, d_sig, s_t = sigma(t), sigma_deriv(t), s(t)
        denoised = denoiser(torch.div(x, s_t), sig)
        return torch.mul(x, d_sig / sig + s_deriv(t) / s_t).sub_(denoised, alpha=d_sig * s_t / sig)

    t_steps = [sigma_inv(sig) for sig in sigmas[:-1]] + [0.0]
    gamma = min(S_churn / N, math.sqrt(2) - 1)
    x = torch.mul(x_T, s(t_steps[0]) * sigma(t_steps[0]) / sigmas[0])
    for i in range(N):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        # Without churn generate.py (L157-158) still takes t_hat = sigma^-1(round(sigma(t_cur))) and adds
        # noise of std sqrt(max(sigma(t_hat)^2 - sigma(t_cur)^2, 0)): rounding error alone, as the round
        # trip through sigma^-1 can land an ulp high (noise ~1e-8 sigma); here t_hat = t_cur and no draw.
        t_hat, x_hat = t_cur, x
        if gamma > 0 and S_tmin <= sigma(t_cur) <= S_tmax:
            raised = denoiser.round_sigma(torch.tensor(sigma(t_cur) * (1 + gamma), dtype=torch.float64))
            t_hat = sigma_inv(float(raised))
            std = math.sqrt(max(sigma(t_hat) ** 2 - sigma(t_cur) ** 2, 0.0)) * s(t_hat) * S_noise
            x_hat = torch.mul(x, s(t_hat) / s(t_cur)).add_(noise.normal(i), alpha=std)
        h = t_next - t_hat
        d_cur = slope(x_hat, t_hat)
        if solver == "euler" or i == N - 1:
            x = torch.add(x_hat, d_cur, alpha=h)
            continue
        t_prime = t_hat + alpha * h
        d_prime = slope(torch.add(x_hat, d_cur, alpha=alpha * h), t_prime)
        weight = 1 / (2 * alpha)
        x = torch.add(x_hat, d_cur.mul_(h * (1 - weight)).add_(d_prime, alpha=h * weight))
    return x


def _scaling(
    scaling: Scaling, sigma: Callable[[float], float], sigma_deriv: Callable[[float], float]
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """s(t), s'(t): vp s = 1/sqrt(1 + sigma^2), s' = -sigma sigma' s^3; none s = 1 (generate.py L136-143)."""
    if scaling == "vp":

        def s(t: float) -> float:
            return 1 / math.sqrt(1 + sigma(t) ** 2)

        return s, lambda t: -sigma(t) * sigma_deriv(t) * s(t) ** 3
    return (lambda t: 1.0), (lambda t: 0.0)


# generate.py ablation_sampler: Euler N, 2nd order on all but the last step (default solver heun).
SPEC = SamplerSpec(
    "edm_general", edm_general, "sigma", lambda K, o: K if o.get("solver", "heun") == "euler" else 2 * K - 1,
    takes_grid_range=True, check_options=check_options,
)
