"""score-SDE's VP SDE samplers (Song et al. 2021, VP SDE of Eq. 11): Euler-Maruyama on the reverse-time SDE
(Eq. 6) and the black-box probability-flow ODE sampler (Eq. 13).

``score_fn`` is a bench.core.denoiser.VPTimeScore (``score_fn(x, t)`` and ``score_fn.sde.beta(t)``),
``grid`` K + 1 descending times t_0 = 1 > ... > t_K (bench.core.vp_schedule.VPSDE.time_grid). Who draws x_T:
the caller, from the VP prior N(0, I) (``score_fn.prior``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from bench.core.noise import NoiseSource
from bench.core.options import Positive
from bench.samplers.spec import SamplerSpec

# torchdiffeq's adaptive Runge-Kutta solvers.
OdeMethod = Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"]


def _check_time_grid(grid: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 2 or not torch.all(torch.isfinite(g)) or torch.any(g[1:] >= g[:-1]):
        raise ValueError(f"VP SDE time grid must be 1-D, finite, strictly descending, >= 2 times; got {g.tolist()}")
    return g


@torch.no_grad()
def euler_maruyama(
    score_fn, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource, denoise: bool = True
) -> torch.Tensor:
    """Per step k, h = 1/K: x <- x + h beta(t_k) (x / 2 + score(x, t_k)) + sqrt(h beta(t_k)) z (score-SDE Eq. 6).

    The reverse SDE's drift is f - g^2 score = -beta x / 2 - beta score, integrated backwards by
    -h (score-SDE's EulerMaruyamaPredictor, no corrector: configs/vp/cifar10_ddpmpp_continuous.py).
    h is score-SDE's dt = -1/N with N = K (sampling.py L182), not the grid's spacing (1 - eps)/(K - 1):
    the two agree only when eps = 1/K (its K = 1000, eps = 1e-3); the grid's last time 0 is not visited.
    ``denoise`` returns the last step's mean, without its noise (score-SDE ``noise_removal``).
    Noise: step k draws ``noise.normal(k)``. One network call per step: NFE = K.
    """
    times = _check_time_grid(grid)
    h = 1.0 / (len(times) - 1)
    x = x_T
    x_mean = x
    for k in range(len(times) - 1):
        t = times[k]
        bh = score_fn.sde.beta(t) * h
        x_mean = x + bh * (0.5 * x + score_fn(x, t))
        x = x_mean + torch.sqrt(bh) * noise.normal(k)
    return x_mean if denoise else x


# score-SDE's number of discrete steps of the VP SDE, model.num_scales in configs/default_cifar10_configs.py
# L53 (no VP CIFAR-10 config overrides it): its ODE sampler's denoising step reads the discrete beta of
# this N whatever the solver did (sampling.py L435-L441 through sde_lib.py VPSDE.discretize L156-L164).
SCORE_SDE_N = 1000


def denoising_beta(sde, N: int, eps: float) -> float:
    """The discrete beta score-SDE's final denoising step uses at t = eps: its table
    linspace(beta_min / N, beta_max / N, N) read at index floor(eps (N - 1)) (``VPSDE.discretize``)."""
    index = math.floor(eps * (N - 1))
    return sde.beta_min / N + index * (sde.beta_max - sde.beta_min) / (N * (N - 1))


@torch.no_grad()
def probability_flow(
    score_fn,
    x_T: torch.Tensor,
    grid: torch.Tensor,
    *,
    noise: NoiseSource,
    rtol: Positive = 1e-5,
    atol: Positive = 1e-5,
    method: OdeMethod = "dopri5",
    denoise: bool = True,
) -> torch.Tensor:
    """score-SDE's black-box ODE sampler: dx/dt = -beta(t) (x + score(x, t)) / 2 from t = 1 to eps, adaptive.

    The VP probability-flow ODE (score-SDE Eq. 13) is solved by torchdiffeq's ``method`` (dopri5 is
    the Dormand-Prince 5(4) pair of scipy's RK45, which score-SDE's ``get_ode_sampler`` calls with
    rtol = atol = 1e-5) from ``grid[0]`` to ``grid[-2]`` (the vp_sde grid's t = 1 and eps; the
    steps between are the solver's own, and K does not matter). As in score-SDE
    one adaptive step size serves the whole batch (an RMS error norm over it), so a sample depends
    on its batch within the tolerances. ``denoise`` (score-SDE ``noise_removal``) ends with its
    reverse-diffusion step at eps without noise, x <- (2 - sqrt(1 - b)) x + b score(x, eps), b the
    discrete beta of ``denoising_beta`` for score-SDE's N = 1000 (SCORE_SDE_N), whatever K is.
    ``noise`` is unused (x_T is the only randomness). NFE: measured (the solver's evaluations, plus
    one for denoising).
    """
    from torchdiffeq import odeint

    times = _check_time_grid(grid)
    if len(times) < 3:
        raise ValueError(f"the vp_sde grid has K + 1 >= 3 times (1, ..., eps, 0); got {times.tolist()}")
    t0, eps = times[0], times[-2]

    def drift(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * score_fn.sde.beta(t) * (x + score_fn(x, t))

    span = torch.stack([t0, eps]).to(x_T.device)
    # Pin the first step (torchdiffeq's automatic guess probes past the interval) and end a step at eps.
    options = {"first_step": 1e-2 * (t0 - eps), "step_t": span[1:]}
    x = odeint(drift, x_T, span, rtol=rtol, atol=atol, method=method, options=options)[-1]
    if denoise:
        b = denoising_beta(score_fn.sde, SCORE_SDE_N, float(eps))
        x = (2.0 - math.sqrt(1.0 - b)) * x + b * score_fn(x, eps)
    return x


# Adaptive: no count is known before the solve (the shards record the measured NFE). A planning
# assumption, not a measurement: VP_ODE_NFE solver evaluations, plus one for the denoising step.
VP_ODE_NFE = 200
SPECS = (
    SamplerSpec("vp_euler_maruyama", euler_maruyama, "vp_time", lambda K, o: K),
    SamplerSpec(
        "vp_probability_flow", probability_flow, "vp_time", lambda K, o: VP_ODE_NFE + int(o.get("denoise", True))
    ),
)
