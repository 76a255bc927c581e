"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance estimated from the mean square of eps.

Step indices are 0-based (bench.core.schedules). abar = alpha-bar, bbar = 1 - abar; for a pair s < t of a
trajectory, alpha_{t|s} = abar_t / abar_s. ``gamma[n]`` is the Monte Carlo mean square of the eps
prediction, E||eps_hat(x_n, n)||^2 / d (the official code's ``ms_eps``). Bao et al.'s Gamma_n of Eq. 8
is the mean square of the score s = -eps / sqrt(bbar_n), so their factor 1 - bbar_n Gamma_n is
1 - gamma[n] here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.core.denoiser import DiscreteEpsDenoiser, clip_prediction
from bench.core.noise import normal
from bench.core.schedules import posterior_coefficients
from bench.metrics.nll import decoder_variance, discretized_gaussian_log_likelihood, gaussian_kl
from bench.runtime.io import CorruptFileError, atomic_npz, load_npz

FORMS = ("ddpm", "ddim")
PAPER_PIXEL_QUANTUM = 2.0 / 255.0  # one intensity level of 8-bit data scaled to [-1, 1]
MOMENTS_FORMAT = "dpm-bench-moments/1"


# --- Monte Carlo estimate of gamma and its artifact ---------------------------------------------


def mean_square_eps(
    denoiser: DiscreteEpsDenoiser,
    x0_samples: torch.Tensor,
    steps: torch.Tensor | Sequence[int] | None,
    seeds: torch.Tensor,
    *,
    batch_size: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step: mean over samples of ||eps_hat(x_n, n)||^2 / d and its standard error, NaN off ``steps``.

    Sample m is noised as x_n = sqrt(abar_n) x0_m + sqrt(bbar_n) eps with eps drawn from its own seed
    (stream n + 1), so the estimate does not depend on ``batch_size``. Cost: len(steps) x M network
    evaluations (``steps`` None: all T steps).
    """
    stats = step_statistics(denoiser, x0_samples, steps, seeds, batch_size=batch_size)
    return stats["gamma"], stats["gamma_sem"]


def step_statistics(
    denoiser: DiscreteEpsDenoiser,
    x0_samples: torch.Tensor,
    steps: torch.Tensor | Sequence[int] | None,
    seeds: torch.Tensor,
    *,
    batch_size: int = 1000,
    max_level: int | None = None,
) -> dict[str, torch.Tensor]:
    """mean_square_eps's gamma and gamma_sem [T]; with ``max_level``, also the beta bound's terms [T] per dim.

    From the same draws and network calls, as the official get_nelbo_terms (core/inference/ll/elbo.py
    L104-117) on its training split: ``recon`` = E||x0 - clip(x0_hat(x_n))||^2 / d and ``decoder_nll`` =
    E[-log p(x0 | x_n)] / d, the discretised decoder of mean clip(x0_hat) and variance decoder_variance
    of the trajectory that starts at n.
    """
    x0 = x0_samples.to(torch.float64)
    M = x0.shape[0]
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    if seeds.shape != (M,):
        raise ValueError(f"seeds of shape {tuple(seeds.shape)} must give one seed per sample, shape ({M},)")
    if M < 1:
        raise ValueError(f"gamma needs at least 1 sample, got M={M}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    T = len(denoiser.alpha_bars)
    steps = _step_indices(steps, T)
    shape = tuple(x0.shape[1:])
    total = torch.zeros(len(steps), dtype=torch.float64)
    total_sq = torch.zeros(len(steps), dtype=torch.float64)
    recon = torch.zeros(len(steps), dtype=torch.float64)
    nll = torch.zeros(len(steps), dtype=torch.float64)
    for start in range(0, M, batch_size):
        xb = x0[start : start + batch_size]
        sb = seeds[start : start + batch_size].to(xb.device)
        for i, n in enumerate(steps.tolist()):
            abar = denoiser.alpha_bars[n]
            x_n = torch.sqrt(abar) * xb + torch.sqrt(1.0 - abar) * normal(sb, n + 1, shape).to(xb.device)
            pred = denoiser(x_n, n)
            ms = pred.eps.reshape(len(xb), -1).pow(2).mean(dim=1).cpu()
            total[i] += ms.sum()
            total_sq[i] += ms.pow(2).sum()
            if max_level is not None:
                x0_hat = pred.x0.clamp(-1.0, 1.0)
                recon[i] += float((xb - x0_hat).pow(2).mean(dim=tuple(range(1, xb.dim()))).sum())
                std = torch.sqrt(decoder_variance(denoiser.alpha_bars, torch.tensor([n]), "chain"))
                ll = discretized_gaussian_log_likelihood(xb, x0_hat, std, 1.0 / max_level)
                nll[i] -= float(ll.mean(dim=tuple(range(1, xb.dim()))).sum())
    mean = total / M
    # One image has no spread to estimate: its standard error is undefined (NaN), as for moments with none.
    var = (total_sq / M - mean**2).clamp(min=0.0) * M / (M - 1) if M > 1 else torch.full_like(mean, math.nan)
    out = {"gamma": mean, "gamma_sem": torch.sqrt(var / M)}
    if max_level is not None:
        out |= {"recon": recon / M, "decoder_nll": nll / M}
    full = {}
    for key, values in out.items():
        full[key] = torch.full((T,), math.nan, dtype=torch.float64)
        full[key][steps] = values
    return full


def estimate_gamma(
    denoiser: DiscreteEpsDenoiser,
    x0_samples: torch.Tensor,
    steps: torch.Tensor | Sequence[int] | None,
    seeds: torch.Tensor,
    *,
    batch_size: int = 1000,
) -> torch.Tensor:
    """gamma_n = (1/M) sum_m ||eps_hat(x_{n,m}, n)||^2 / d, x_{n,m} ~ q(x_n | x0_m) (Bao et al. Eq. 8 via eps); [T]."""
    return mean_square_eps(denoiser, x0_samples, steps, seeds, batch_size=batch_size)[0]


def _step_indices(steps, T: int) -> torch.Tensor:
    if steps is None:
        return torch.arange(T, dtype=torch.int64)
    idx = torch.as_tensor(steps, dtype=torch.int64).reshape(-1)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= T or len(torch.unique(idx)) != len(idx):
        raise ValueError(f"steps {idx.tolist()} must be distinct step indices in [0, T={T})")
    return idx


def model_hash(net: nn.Module) -> str:
    """sha256 (16 hex digits) of a network's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class BoundTerms:
    """step_statistics' ``recon`` and ``decoder_nll`` [T]: what the DP of the beta bounds' trajectory needs."""

    recon: torch.Tensor
    decoder_nll: torch.Tensor


@dataclass(frozen=True)
class Moments:
    """gamma of one model (NaN at steps not estimated), the beta bound's terms where saved, with what made them."""

    gamma: torch.Tensor
    gamma_sem: torch.Tensor
    model_hash: str
    n_samples: int
    seed: int
    bound_terms: BoundTerms | None = None


def save_moments(
    path: Path,
    gamma: torch.Tensor,
    *,
    model_hash: str,
    n_samples: int,
    seed: int,
    gamma_sem: torch.Tensor | None = None,
    bound_terms: BoundTerms | None = None,
    provenance: dict[str, str | float] | None = None,
) -> Path:
    """Write gamma (and its standard error) atomically, recording the model hash, M, the seed and ``provenance``.

    ``bound_terms`` are stored beside gamma where given; ``provenance`` (bench.runtime.stepclock.StepClock.record:
    device and timing) is stored as one array per key.
    """
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    sem = torch.full_like(gamma, math.nan) if gamma_sem is None else torch.as_tensor(gamma_sem, dtype=torch.float64)
    if gamma.dim() != 1 or sem.shape != gamma.shape:
        raise ValueError(f"gamma {tuple(gamma.shape)} must be 1-D and gamma_sem {tuple(sem.shape)} the same shape")
    return atomic_npz(
        Path(path),
        format=np.array(MOMENTS_FORMAT),
        gamma=gamma.numpy(),
        gamma_sem=sem.numpy(),
        model_hash=np.array(model_hash),
        n_samples=np.int64(n_samples),
        seed=np.int64(seed),
        **(
            {}
            if bound_terms is None
            else {"recon": bound_terms.recon.numpy(), "decoder_nll": bound_terms.decoder_nll.numpy()}
        ),
        **{key: np.array(value) for key, value in (provenance or {}).items()},
    )


def load_moments(path: Path, *, model_hash: str | None = None) -> Moments:
    """Read a file written by save_moments; with ``model_hash``, refuse moments of another model."""
    arrays = load_npz(Path(path), ("format", "gamma", "gamma_sem", "model_hash", "n_samples", "seed"))
    if str(arrays["format"]) != MOMENTS_FORMAT:
        raise CorruptFileError(f"{path} is not a {MOMENTS_FORMAT} file (format {str(arrays['format'])!r})")
    found = str(arrays["model_hash"])
    if model_hash is not None and found != model_hash:
        raise ValueError(f"moments file {path} was estimated for model {found}, not for model {model_hash}")
    return Moments(
        gamma=torch.from_numpy(arrays["gamma"]),
        gamma_sem=torch.from_numpy(arrays["gamma_sem"]),
        model_hash=found,
        n_samples=int(arrays["n_samples"]),
        seed=int(arrays["seed"]),
        bound_terms=(
            BoundTerms(torch.from_numpy(arrays["recon"]), torch.from_numpy(arrays["decoder_nll"]))
            if "recon" in arrays and "decoder_nll" in arrays
            else None
        ),
    )


# --- the analytic variance on a pair s < t and its bounds ----------------------------------------


def forward_lambda2(abar_s: torch.Tensor, abar_t: torch.Tensor, form: str) -> torch.Tensor:
    """lambda^2_{s|t} of the forward process (Bao et al. Eq. 13): beta-tilde_{s|t} for DDPM, 0 for DDIM."""
    if form == "ddpm":
        return posterior_coefficients(abar_s, abar_t)[2]
    if form == "ddim":
        return torch.zeros_like(torch.as_tensor(abar_t, dtype=torch.float64) * abar_s)
    raise ValueError(f"forward process form {form!r} is not one of {list(FORMS)}")


def analytic_variance(
    abar_s: torch.Tensor, abar_t: torch.Tensor, gamma_t: torch.Tensor, lambda2: torch.Tensor
) -> torch.Tensor:
    """sigma-hat^2 = lambda^2 + (sqrt(bbar_t / alpha_{t|s}) - sqrt(bbar_s - lambda^2))^2 (1 - gamma_t) (Eq. 9, Sec. 4).

    The official code's equivalent form: lambda^2 + (sqrt(abar_s) - sqrt(bbar_s - lambda^2) sqrt(abar_t / bbar_t))^2
    cov_x0, with cov_x0 = bbar_t / abar_t (1 - gamma_t) the average posterior variance of x0.
    """
    coeff = torch.sqrt((1.0 - abar_t) * abar_s / abar_t) - torch.sqrt(1.0 - abar_s - lambda2)
    return lambda2 + coeff**2 * (1.0 - gamma_t)


def variance_bounds(
    abar_s: torch.Tensor, abar_t: torch.Tensor, lambda2: torch.Tensor, *, half_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower, upper Eq. 11, upper Eq. 12) of sigma*^2 on a pair (Theorem 2, App. C), data in [-h, h]^d.

    lower = lambda^2; Eq. 11 = lambda^2 + (sqrt(bbar_t / alpha_{t|s}) - sqrt(bbar_s - lambda^2))^2;
    Eq. 12 = lambda^2 + (sqrt(abar_s) - sqrt(bbar_s - lambda^2) sqrt(abar_t / bbar_t))^2 h^2.
    """
    rest = torch.sqrt(1.0 - abar_s - lambda2)
    eq11 = lambda2 + (torch.sqrt((1.0 - abar_t) * abar_s / abar_t) - rest) ** 2
    eq12 = lambda2 + (torch.sqrt(abar_s) - rest * torch.sqrt(abar_t / (1.0 - abar_t))) ** 2 * half_range**2
    return lambda2, eq11, eq12


def clipped_analytic_variance(
    abar_s: torch.Tensor,
    abar_t: torch.Tensor,
    gamma_t: torch.Tensor,
    lambda2: torch.Tensor,
    *,
    clip: bool = True,
) -> torch.Tensor:
    """Eq. 9 on the pair, clipped to [lambda^2, min(Eq. 11, Eq. 12)] for data in [-1, 1]^d (Theorem 2)."""
    var = analytic_variance(abar_s, abar_t, gamma_t, lambda2)
    if not clip:
        return var
    lower, eq11, eq12 = variance_bounds(abar_s, abar_t, lambda2)
    return torch.minimum(torch.maximum(var, lower), torch.minimum(eq11, eq12))


def pixel_variance_threshold(pixels: float, quantum: float = PAPER_PIXEL_QUANTUM) -> float:
    """(y q sqrt(pi / 2))^2: the largest sigma^2 with E|sigma z| <= y quanta (App. F.2, q = 2/255 there)."""
    if not pixels > 0 or not quantum > 0:
        raise ValueError(f"sigma_2 clip of {pixels!r} pixels of quantum {quantum!r}: both must be positive")
    return (pixels * quantum * math.sqrt(math.pi / 2.0)) ** 2


def gamma_on(gamma, T: int, steps: torch.Tensor) -> torch.Tensor:
    """gamma as float64 [T], checked finite at ``steps``."""
    g = torch.as_tensor(gamma, dtype=torch.float64).cpu()
    if g.shape != (T,):
        raise ValueError(f"gamma has shape {tuple(g.shape)}; it must hold one value per step, shape ({T},)")
    bad = steps[~torch.isfinite(g[steps])]
    if len(bad):
        raise ValueError(f"gamma is not finite (not estimated?) at steps {bad.tolist()}, which the trajectory uses")
    return g


def pair_variances(
    alpha_bars: torch.Tensor,
    s: torch.Tensor,
    t: torch.Tensor,
    gamma: torch.Tensor,
    *,
    form: str,
    clip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma-hat^2, lambda^2) of the reverse steps t -> s, s < t elementwise: Eq. 9 from gamma_t, Theorem 2 clip."""
    g = gamma_on(gamma, len(alpha_bars), torch.unique(t))
    abar_s, abar_t = alpha_bars[s], alpha_bars[t]
    lam2 = forward_lambda2(abar_s, abar_t, form)
    return clipped_analytic_variance(abar_s, abar_t, g[t], lam2, clip=clip), lam2


def trajectory_variances(
    alpha_bars: torch.Tensor,
    grid: torch.Tensor,
    gamma: torch.Tensor,
    *,
    form: str,
    clip: bool = True,
) -> torch.Tensor:
    """sigma-hat^2_{tau_{k-1}|tau_k} for k = 1..K-1 of an ascending grid (Sec. 4), element k-1 for step k."""
    grid = torch.as_tensor(grid, dtype=torch.int64)
    if len(grid) < 2:
        return torch.zeros(0, dtype=torch.float64)
    return pair_variances(alpha_bars, grid[:-1], grid[1:], gamma, form=form, clip=clip)[0]


def sampling_variances(
    alpha_bars: torch.Tensor,
    grid: torch.Tensor,
    gamma: torch.Tensor,
    *,
    form: str,
    clip: bool = True,
    sigma2_clip_pixel: float | None = None,
    pixel_quantum: float = PAPER_PIXEL_QUANTUM,
) -> torch.Tensor:
    """The reverse variances of Analytic-DPM's samplers and bound: Eq. 9 per step, Theorem 2 clip, App. F.2 cap.

    trajectory_variances, with sigma_2^2 (the step to tau_1) capped by pixel_variance_threshold when
    ``sigma2_clip_pixel`` is given (sampling only; the bound of Table 1 leaves it out).
    """
    var = trajectory_variances(alpha_bars, grid, gamma, form=form, clip=clip)
    if sigma2_clip_pixel is not None and len(var):
        var = var.clone()
        var[0] = var[0].clamp(max=pixel_variance_threshold(sigma2_clip_pixel, pixel_quantum))
    return var


# --- the variational bound with the analytic variance ---------------------------------------------


def vlb_bits_per_dim_analytic(
    denoiser: DiscreteEpsDenoiser,
    x0: torch.Tensor,
    grid: torch.Tensor,
    seeds: torch.Tensor,
    *,
    gamma: torch.Tensor,
    max_level: int,
    clip_x0: bool = True,
    clip: bool = True,
) -> torch.Tensor:
    """Per-image L_vb in bits/dim with p(x_s | x_t) = N(mu-tilde(x_t, x0_hat), sigma-hat^2), DDPM forward (Table 1).

    Same draws, prior, KL and discretised decoder as bench.metrics.nll.vlb_bits_per_dim (which see) with
    its ``decoder="chain"``; only the reverse variance of the K - 1 transitions differs, so the two are
    paired per image.
    """
    x0 = x0.to(torch.float64)
    B = x0.shape[0]
    shape = tuple(x0.shape[1:])
    grid = torch.as_tensor(grid, dtype=torch.int64)
    abar = denoiser.alpha_bars[grid]
    K = len(grid)
    var_p = sampling_variances(denoiser.alpha_bars, grid, gamma, form="ddpm", clip=clip)
    a_T = abar[-1]
    total = gaussian_kl(torch.sqrt(a_T) * x0, 1.0 - a_T, torch.zeros(()), torch.ones(())).reshape(B, -1).sum(1)
    for k in range(K - 1, -1, -1):
        x_t = torch.sqrt(abar[k]) * x0 + torch.sqrt(1.0 - abar[k]) * normal(seeds, k + 1, shape)
        pred = denoiser(x_t, int(grid[k]))
        if clip_x0:
            pred = clip_prediction(pred, x_t, abar[k])
        if k == 0:
            dec_var = decoder_variance(denoiser.alpha_bars, grid, "chain")
            ll = discretized_gaussian_log_likelihood(x0, pred.x0, torch.sqrt(dec_var), 1.0 / max_level)
            total = total - ll.reshape(B, -1).sum(1)
            break
        c0, ct, var_q = posterior_coefficients(abar[k - 1], abar[k])
        kl = gaussian_kl(c0 * x0 + ct * x_t, var_q, c0 * pred.x0 + ct * x_t, var_p[k - 1])
        total = total + kl.reshape(B, -1).sum(1)
    return total / (x0[0].numel() * math.log(2.0))
