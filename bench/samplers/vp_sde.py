"""score-SDE's VP and sub-VP SDE samplers (Song et al. 2021, Eqs. 11-12): Euler-Maruyama on the reverse-time
SDE (Eq. 6) and the black-box probability-flow ODE sampler (Eq. 13).

``score_fn`` is a VP-time score (``score_fn(x, t)``) whose ``sde`` is the model's: a
bench.core.vp_schedule.VPSDE or SubVPSDE, read through its coefficients (``beta(t)``, ``discount(t)`` =
g^2 / beta, ``reverse_diffusion``), so one update serves both. ``grid`` is K + 1 descending times
t_0 = 1 > ... > t_K (VPSDE.time_grid). Who draws x_T: the caller, from the prior N(0, I) (``score_fn.prior``).
"""

from __future__ import annotations

from typing import Literal

import torch

from bench.core.noise import NoiseSource
from bench.core.options import Positive
from bench.samplers.spec import SamplerSpec

# torchdiffeq's adaptive Runge-Kutta solvers.
OdeMethod = Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"]


def check_vp_time_grid(grid: torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 2 or not torch.all(torch.isfinite(g)) or torch.any(g[1:] >= g[:-1]):
        raise ValueError(f"VP SDE time grid must be 1-D, finite, strictly descending, >= 2 times; got {g.tolist()}")
    return g


@torch.no_grad()
def euler_maruyama(
    score_fn, x_T: torch.Tensor, grid: torch.Tensor, *, noise: NoiseSource, denoise: bool = True
) -> torch.Tensor:
    """Per step k, h = 1/K: x <- x + h beta (x / 2 + c score(x, t_k)) + sqrt(h beta c) z at t_k (score-SDE Eq. 6).

    The reverse SDE's drift is f - g^2 score = -beta x / 2 - beta c score with c = g^2 / beta (1 for VP,
    1 - exp(-2 int beta) for sub-VP), integrated backwards by -h (score-SDE's EulerMaruyamaPredictor,
    sampling.py L181-L187, no corrector: configs/vp/cifar10_ddpmpp_continuous.py, configs/subvp/*).
    h is score-SDE's dt = -1/N with N = K (sampling.py L182), not the grid's spacing (1 - eps)/(K - 1):
    the two agree only when eps = 1/K (its K = 1000, eps = 1e-3); the grid's last time 0 is not visited.
    ``denoise`` returns the last step's mean, without its noise (score-SDE ``noise_removal``).
    Noise: step k draws ``noise.normal(k)``. One network call per step: NFE = K.
    """
    times = check_vp_time_grid(grid)
    h = 1.0 / (len(times) - 1)
    x = x_T
    x_mean = x
    for k in range(len(times) - 1):
        t = times[k]
        bh = score_fn.sde.beta(t) * h
        c = score_fn.sde.discount(t)
        x_mean = x + bh * (0.5 * x + c * score_fn(x, t))
        x = x_mean + torch.sqrt(bh * c) * noise.normal(k)
    return x_mean if denoise else x


# score-SDE's number of discrete steps of the VP SDE, model.num_scales in configs/default_cifar10_configs.py
# L53 (no VP or sub-VP CIFAR-10 config overrides it): its ODE sampler's denoising step is the reverse-diffusion
# step of this N whatever the solver did (sampling.py L435-L441 through the SDE's discretize).
SCORE_SDE_N = 1000


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
    """score-SDE's black-box ODE sampler: dx/dt = -beta(t) (x + c score(x, t)) / 2 from t = 1 to eps, adaptive.

    The probability-flow ODE (score-SDE Eq. 13; c = g^2 / beta, see ``euler_maruyama``) is solved by
    torchdiffeq's ``method`` (dopri5 is the Dormand-Prince 5(4) pair of scipy's RK45, which score-SDE's
    ``get_ode_sampler`` calls with rtol = atol = 1e-5) from ``grid[0]`` to ``grid[-2]`` (the vp_sde grid's
    t = 1 and eps; the steps between are the solver's own, and K does not matter). As in score-SDE
    one adaptive step size serves the whole batch (an RMS error norm over it), so a sample depends
    on its batch within the tolerances. ``denoise`` (score-SDE ``noise_removal``) ends with its
    reverse-diffusion step at eps without noise, x <- a x + b score(x, eps) with the SDE's (a, b)
    (``reverse_diffusion``: DDPM's discrete beta for VP, an Euler step for sub-VP) for score-SDE's
    N = 1000 (SCORE_SDE_N), whatever K is.
    ``noise`` is unused (x_T is the only randomness). NFE: measured (the solver's evaluations, plus
    one for denoising).
    """
    from torchdiffeq import odeint

    times = check_vp_time_grid(grid)
    if len(times) < 3:
        raise ValueError(f"the vp_sde grid has K + 1 >= 3 times (1, ..., eps, 0); got {times.tolist()}")
    t0, eps = times[0], times[-2]

    def drift(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * score_fn.sde.beta(t) * (x + score_fn.sde.discount(t) * score_fn(x, t))

    span = torch.stack([t0, eps]).to(x_T.device)
    # Pin the first step (torchdiffeq's automatic guess probes past the interval) and end a step at eps.
    options = {"first_step": 1e-2 * (t0 - eps), "step_t": span[1:]}
    x = odeint(drift, x_T, span, rtol=rtol, atol=atol, method=method, options=options)[-1]
    if denoise:
        a, b = score_fn.sde.reverse_diffusion(float(eps), SCORE_SDE_N)
        x = a * x + b * score_fn(x, eps)
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
