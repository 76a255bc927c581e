"""iDDPM (Nichol & Dhariwal 2021): learned-range variances, the hybrid loss and its VLB.

Step indices are 0-based (bench.core.schedules). A respaced chain (bench.core.time_grids.respaced_grid)
is the sub-chain over an ascending grid of kept steps, its betas recomputed from alpha-bar
(DiscreteSchedule.sub_chain). A learned-variance network outputs 2C channels [eps, v]; v = -1 gives
the chain's beta-tilde (clipped at the first step) and v = +1 its beta, v is not clamped
(improved_diffusion's ``learned_range``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser, Prediction, clip_prediction
from bench.core.labels import network_label_dim
from bench.core.noise import normal
from bench.core.schedules import DiscreteSchedule, posterior_coefficients
from bench.methods.iddpm_chain import network_time_scale
from bench.metrics.nll import discretized_gaussian_log_likelihood, gaussian_kl

HYBRID_LAMBDA = 0.001


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"number of diffusion steps T={T!r} must be a positive integer")


# --- learned-range variances --------------------------------------------------------------------


def log_variance_bounds(schedule: DiscreteSchedule, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta_k, log beta-tilde_k) [K] of the chain respaced to ``grid``, beta-tilde_0 := beta-tilde_1 (iDDPM)."""
    grid = torch.as_tensor(grid, dtype=torch.int64)
    if grid.dim() != 1 or len(grid) < 2:
        raise ValueError(f"a learned-range variance needs a grid of at least 2 steps, got {grid.tolist()}")
    if grid[0] < 0 or grid[-1] >= schedule.T or torch.any(grid[1:] <= grid[:-1]):
        raise ValueError(f"grid {grid.tolist()} must be ascending unique steps in [0, T-1={schedule.T - 1}]")
    betas = schedule.sub_chain(grid).betas
    abar = schedule.alpha_bars[grid]
    _, _, beta_tilde = posterior_coefficients(abar[:-1], abar[1:])
    return torch.log(betas), torch.log(torch.cat([beta_tilde[:1], beta_tilde]))


def learned_log_variance(v: torch.Tensor, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor) -> torch.Tensor:
    """log sigma^2 = frac log beta + (1 - frac) log beta-tilde, frac = (v + 1) / 2 (iDDPM Eq. 15, code's range)."""
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def split_eps_v(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The [eps, v] halves of a learned-variance network's 2C output channels."""
    if out.dim() < 2 or out.shape[1] != 2 * channels:
        raise ValueError(
            f"a learned-variance network must output 2C = {2 * channels} channels [eps, v], "
            f"got output of shape {tuple(out.shape)}"
        )
    return out[:, :channels], out[:, channels:]


@dataclass
class VariancePrediction(Prediction):
    """A Prediction with the network's variance output v (same shape as eps)."""

    v: torch.Tensor


def clip_variance_prediction(pred: VariancePrediction, x: torch.Tensor, abar: torch.Tensor) -> VariancePrediction:
    """clip_prediction (x0 to [-1, 1], eps recomputed), keeping v."""
    clipped = clip_prediction(pred, x, abar)
    return VariancePrediction(eps=clipped.eps, x0=clipped.x0, v=pred.v)


class LearnedVarianceDenoiser(DiscreteEpsDenoiser):
    """A [eps, v] network on a discrete chain: x0 as DiscreteEpsDenoiser.x0_of (DDPM Eq. 15), plus v.

    ``time_scale`` None feeds what the chain's network was trained on (bench.methods.iddpm_chain: t = n * 1000 / T,
    or n for a chain with rescale_timesteps False). A class-conditional network (``num_classes``) is called with
    ``class_labels``, the class index of each row, set by the caller before the sampler runs (improved-diffusion
    image_sample.py L44-48 passes them as ``model_kwargs["y"]``).
    """

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule, time_scale: float | None = None):
        scale = network_time_scale(schedule) if time_scale is None else float(time_scale)
        super().__init__(net, schedule, time_scale=scale)
        self.label_dim = network_label_dim(net)
        self.class_labels: torch.Tensor | None = None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, n: int) -> VariancePrediction:
        t = torch.full((x.shape[0],), float(n) * self.time_scale, device=x.device)
        out = self.net(x.to(self._param.dtype), t.to(self._param.dtype), *self._labels(x)).to(x.dtype)
        self.nfe += 1
        eps, v = split_eps_v(out, x.shape[1])
        return VariancePrediction(eps=eps, x0=self.x0_of(x, eps, n), v=v)

    def _labels(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network's extra argument y: the rows' class indices for a conditional network, else none."""
        if not self.label_dim:
            return ()
        if self.class_labels is None:
            raise ValueError(
                f"this network is class-conditional (num_classes={self.label_dim}): set class_labels first"
            )
        return (self.class_labels.to(x.device),)


# --- the hybrid loss ----------------------------------------------------------------------------


def hybrid_terms(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    n: torch.Tensor,
    noise: torch.Tensor,
    *,
    max_level: int,
    time_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (L_simple, L_t): mean ||eps - eps_hat||^2 and the VLB term L_t in bits/dim with eps_hat detached.

    L_t (iDDPM Sec. 3.1) is KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)) for n > 0 and the discretised
    decoder NLL over max_level + 1 levels for n = 0; its mean uses the stop-gradient eps_hat and
    the unclipped x0_hat (improved_diffusion's frozen output, clip_denoised=False), so v learns only
    from L_t and eps only from L_simple. x0 must lie on the level grid in [-1, 1].
    """
    return _loss_terms(net, schedule, x0, n, noise, max_level, time_scale, detach_mean=True)


def vlb_terms(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    n: torch.Tensor,
    noise: torch.Tensor,
    *,
    max_level: int,
    time_scale: float | None = None,
) -> torch.Tensor:
    """Per-sample L_t in bits/dim (iDDPM Sec. 3.1) with gradients to both eps_hat and v: the L_vlb objective's term.

    The value is hybrid_terms' L_t; only the stop-gradient on eps_hat is gone (improved_diffusion
    gaussian_diffusion.py L698-706: LossType.KL / RESCALED_KL call _vb_terms_bpd on the model itself,
    clip_denoised=False).
    """
    return _loss_terms(net, schedule, x0, n, noise, max_level, time_scale, detach_mean=False)[1]


def _loss_terms(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    n: torch.Tensor,
    noise: torch.Tensor,
    max_level: int,
    time_scale: float | None,
    *,
    detach_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(max_level, int) or max_level < 1:
        raise ValueError(f"max_level={max_level!r} must be a positive integer")
    T = schedule.T
    n = torch.as_tensor(n, dtype=torch.int64)
    if n.shape != (x0.shape[0],) or n.min() < 0 or n.max() >= T:
        raise ValueError(f"steps n must be one per sample, shape ({x0.shape[0]},), in [0, {T - 1}]")
    scale = network_time_scale(schedule) if time_scale is None else float(time_scale)
    view = (-1,) + (1,) * (x0.dim() - 1)
    # The schedule's tables live on the CPU: index them there, then move the rows to x0's device.
    device = x0.device
    n = n.cpu()
    abar_all = schedule.alpha_bars
    abar = abar_all[n].view(view).to(device)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar_all[:-1]])[n].view(view).to(device)
    noise = noise.to(device)
    x0_64 = x0.to(torch.float64)
    x_t = torch.sqrt(abar) * x0_64 + torch.sqrt(1.0 - abar) * noise.to(torch.float64)
    out = net(x_t.to(x0.dtype), (n.to(torch.float64) * scale).to(device=device, dtype=x0.dtype))
    eps_hat, v = split_eps_v(out, x0.shape[1])
    simple = ((eps_hat - noise) ** 2).flatten(1).mean(1)

    eps_mean = eps_hat.detach() if detach_mean else eps_hat
    x0_hat = (x_t - torch.sqrt(1.0 - abar) * eps_mean.to(torch.float64)) / torch.sqrt(abar)
    c0, ct, _ = posterior_coefficients(abar_prev, abar)
    log_beta, log_beta_tilde = log_variance_bounds(schedule, torch.arange(T))
    log_beta_n, log_beta_tilde_n = log_beta[n].view(view).to(device), log_beta_tilde[n].view(view).to(device)
    log_var = learned_log_variance(v.to(torch.float64), log_beta_n, log_beta_tilde_n)
    mean_p = c0 * x0_hat + ct * x_t
    # q's variance is the clipped beta-tilde, which is the exact one for n > 0 and finite at n = 0.
    kl = gaussian_kl(c0 * x0_64 + ct * x_t, torch.exp(log_beta_tilde_n), mean_p, torch.exp(log_var))
    decoder = -discretized_gaussian_log_likelihood(x0_64, mean_p, torch.exp(0.5 * log_var), 1.0 / max_level)
    term = torch.where((n == 0).view(view).to(device), decoder, kl)
    return simple, term.flatten(1).mean(1) / math.log(2.0)


class LossSecondMomentSampler:
    """Importance sampling of t: p_t proportional to sqrt(E[L_t^2]) over the last ``history`` losses (iDDPM Eq. 18).

    Uniform until every step has ``history`` losses; then mixed with ``uniform_prob`` of the uniform
    law (improved_diffusion resample.py L124-154: LossSecondMomentResampler, history_per_term=10,
    uniform_prob=0.001).
    """

    def __init__(self, T: int, *, history: int = 10, uniform_prob: float = 0.001):
        _check_T(T)
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history={history!r} must be a positive integer")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob={uniform_prob!r} must lie in [0, 1]")
        self.T = T
        self.uniform_prob = uniform_prob
        self.losses = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.int64)

    def probs(self) -> torch.Tensor:
        """p_t [T], summing to 1."""
        history = self.losses.shape[1]
        if torch.any(self.counts < history):
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = torch.sqrt((self.losses**2).mean(1))
        return (1.0 - self.uniform_prob) * w / w.sum() + self.uniform_prob / self.T

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps n [batch], weights 1 / (T p_n)): weighted losses estimate the uniform-t mean."""
        p = self.probs()
        n = torch.multinomial(p, batch, replacement=True, generator=gen)
        return n, 1.0 / (self.T * p[n])

    def update(self, n: torch.Tensor, losses: torch.Tensor) -> None:
        """Record each sample's loss at its step, dropping the oldest once a step's history is full."""
        history = self.losses.shape[1]
        for step, loss in zip(n.tolist(), losses.detach().to(torch.float64).tolist(), strict=True):
            count = int(self.counts[step])
            if count < history:
                self.losses[step, count] = loss
                self.counts[step] += 1
            else:
                self.losses[step] = torch.roll(self.losses[step], -1)
                self.losses[step, -1] = loss

    def state_dict(self) -> dict:
        """The loss history and counts, what a resumed run needs to draw the same steps."""
        return {"losses": self.losses.clone(), "counts": self.counts.clone(), "uniform_prob": self.uniform_prob}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() of a sampler with the same T, history and uniform_prob."""
        losses, counts = state["losses"], state["counts"]
        if tuple(losses.shape) != tuple(self.losses.shape) or tuple(counts.shape) != (self.T,):
            raise ValueError(
                f"t-sampler state holds losses of shape {tuple(losses.shape)} and counts of shape "
                f"{tuple(counts.shape)}; this sampler needs {tuple(self.losses.shape)} and ({self.T},)"
            )
        if state["uniform_prob"] != self.uniform_prob:
            raise ValueError(
                f"t-sampler state has uniform_prob={state['uniform_prob']!r}, this sampler {self.uniform_prob!r}"
            )
        self.losses = losses.to(torch.float64).clone()
        self.counts = counts.to(torch.int64).clone()


def _draw_steps(
    schedule: DiscreteSchedule, batch: int, gen: torch.Generator, t_sampler: LossSecondMomentSampler | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, importance weights): uniform n with weight 1, or the sampler's draw with weight 1 / (T p_n)."""
    if t_sampler is None:
        return torch.randint(0, schedule.T, (batch,), generator=gen), torch.ones(batch, dtype=torch.float64)
    if t_sampler.T != schedule.T:
        raise ValueError(f"t-sampler over T={t_sampler.T} steps cannot sample a chain of T={schedule.T}")
    return t_sampler.sample(batch, gen)


def _weighted_mean(
    per_sample: torch.Tensor, n: torch.Tensor, weights: torch.Tensor, t_sampler: LossSecondMomentSampler | None
) -> torch.Tensor:
    # improved_diffusion train_util.py L213-218: the sampler learns from the unweighted (detached)
    # losses["loss"], and the step's loss is (losses["loss"] * weights).mean().
    if t_sampler is not None:
        t_sampler.update(n, per_sample)
    return (weights.to(per_sample.device) * per_sample).mean()


def hybrid_loss(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    gen: torch.Generator,
    *,
    max_level: int,
    lam: float = HYBRID_LAMBDA,
    time_scale: float | None = None,
    t_sampler: LossSecondMomentSampler | None = None,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb (iDDPM Eq. 16), L_vlb estimated by T L_t at one t per sample.

    With lambda = 0.001 this is improved_diffusion's RESCALED_MSE (its vb term times T / 1000). t is
    uniform unless ``t_sampler`` is given; then each sample's loss is weighted by 1 / (T p_t) and
    the sampler is updated with the unweighted losses.
    """
    if not lam >= 0.0:
        raise ValueError(f"hybrid loss weight lambda={lam!r} must be non-negative")
    n, weights = _draw_steps(schedule, x0.shape[0], gen, t_sampler)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    simple, vlb = hybrid_terms(net, schedule, x0, n, noise, max_level=max_level, time_scale=time_scale)
    return _weighted_mean(simple + lam * schedule.T * vlb, n, weights, t_sampler)


def vlb_loss(
    net: nn.Module,
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    gen: torch.Generator,
    *,
    max_level: int,
    time_scale: float | None = None,
    t_sampler: LossSecondMomentSampler | None = None,
) -> torch.Tensor:
    """L_vlb = sum_t L_t (iDDPM Eq. 4-5 without the constant L_T) estimated by T L_t at one t per sample, bits/dim.

    improved_diffusion's --use_kl True is LossType.RESCALED_KL (script_util.py L243-244), the term
    times num_timesteps (gaussian_diffusion.py L707-708), and its L_vlb runs pair it with
    --schedule_sampler loss-second-moment (README "Importance-sampled VLB" and the L_vlb models' flags).
    t and the weights are drawn as in hybrid_loss.
    """
    n, weights = _draw_steps(schedule, x0.shape[0], gen, t_sampler)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    term = vlb_terms(net, schedule, x0, n, noise, max_level=max_level, time_scale=time_scale)
    return _weighted_mean(schedule.T * term, n, weights, t_sampler)


def hybrid_objective(model_cfg: dict, max_level: int):
    """L_hybrid with the config's ``loss.lambda`` (default HYBRID_LAMBDA, improved_diffusion's RESCALED_MSE)."""
    lam = model_cfg.get("loss", {}).get("lambda", HYBRID_LAMBDA)
    return partial(hybrid_loss, max_level=max_level, lam=lam)


def vlb_objective(model_cfg: dict, max_level: int):
    """L_vlb, which takes no options."""
    return partial(vlb_loss, max_level=max_level)


# --- the VLB of a learned-variance model --------------------------------------------------------


def learned_vlb_bits_per_dim(
    denoiser: LearnedVarianceDenoiser,
    x0: torch.Tensor,
    grid: torch.Tensor,
    seeds: torch.Tensor,
    *,
    max_level: int,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Per-image L_prior + sum_k L_{k-1} + L_0 in bits/dim (DDPM Eq. 5) with iDDPM's learned variance (Eq. 15).

    The chain is the sub-chain over ``grid`` (at least 2 steps). The draws x_{tau_k} come from the
    image's own seed exactly as in bench.metrics.nll.vlb_bits_per_dim (stream k + 1), so the two
    bounds are paired. The decoder is the discretised Gaussian over max_level + 1 levels with mean
    x0_hat and the learned variance of the first step (improved_diffusion's calc_bpd_loop).
    """
    if not isinstance(max_level, int) or max_level < 1:
        raise ValueError(f"max_level={max_level!r} must be a positive integer")
    log_beta, log_beta_tilde = log_variance_bounds(denoiser.schedule, grid)
    x0 = x0.to(torch.float64)
    B = x0.shape[0]
    shape = tuple(x0.shape[1:])
    abar = denoiser.alpha_bars[grid]
    a_T = abar[-1]
    total = gaussian_kl(torch.sqrt(a_T) * x0, 1.0 - a_T, torch.zeros(()), torch.ones(())).reshape(B, -1).sum(1)
    for k in range(len(grid) - 1, -1, -1):
        x_t = torch.sqrt(abar[k]) * x0 + torch.sqrt(1.0 - abar[k]) * normal(seeds, k + 1, shape)
        pred = denoiser(x_t, int(grid[k]))
        if not isinstance(pred, VariancePrediction):
            raise TypeError(f"the learned-variance VLB needs a denoiser returning v, got {type(pred).__name__}")
        if clip_x0:
            pred = clip_variance_prediction(pred, x_t, abar[k])
        log_var = learned_log_variance(pred.v, log_beta[k], log_beta_tilde[k])
        if k == 0:
            ll = discretized_gaussian_log_likelihood(x0, pred.x0, torch.exp(0.5 * log_var), 1.0 / max_level)
            total = total - ll.reshape(B, -1).sum(1)
            break
        c0, ct, var_q = posterior_coefficients(abar[k - 1], abar[k])
        kl = gaussian_kl(c0 * x0 + ct * x_t, var_q, c0 * pred.x0 + ct * x_t, torch.exp(log_var))
        total = total + kl.reshape(B, -1).sum(1)
    return total / (x0[0].numel() * math.log(2.0))
