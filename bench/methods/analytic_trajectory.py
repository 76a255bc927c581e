"""Analytic-DPM's optimal trajectories (Bao et al. 2022, Sec. 4 and App. B): least-cost paths by dynamic programming.

Step indices are 0-based (bench.core.schedules); gamma is bench.methods.analytic's mean square of eps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.methods.analytic import BoundTerms, gamma_on


def trajectory_cost(alpha_bars: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """J(s, t) = log(1 - beta_{t|s} Gamma_t), Gamma_t = gamma_t / bbar_t (Eq. 14, Corollary 4); [T, T], +inf for s >= t.

    The official cost (core/inference/utils.py L138-145, _get_fn_m: log(1 - skip_beta ms_score)) uses the
    unclipped variance: it equals log(sigma-hat^2 / beta-tilde) up to a term that telescopes along a
    trajectory, so the two choose the same path only where Theorem 2's clip does not bind.
    """
    T = len(alpha_bars)
    s, t = torch.triu_indices(T, T, offset=1)
    g = gamma_on(gamma, T, torch.unique(t))
    abar = torch.as_tensor(alpha_bars, dtype=torch.float64)
    beta_ts = 1.0 - abar[t] / abar[s]
    cost = torch.full((T, T), math.inf, dtype=torch.float64)
    cost[s, t] = torch.log(1.0 - beta_ts * g[t] / (1.0 - abar[t]))
    return cost


def least_cost_trajectory(cost: torch.Tensor, K: int) -> torch.Tensor:
    """The K nodes 0 = tau_1 < ... < tau_K = N - 1 minimising sum_k cost[tau_{k-1}, tau_k] (App. B, Alg. 1).

    Dynamic programming over node positions; position k of a K-node path can only hold nodes
    k..N-K+k, so each of the K - 1 transitions is a (N-K+1)^2 block: O(K (N-K+1)^2) in all,
    at most about 0.15 N^3 (K = N/3) and O(N) for K = N.
    """
    N = cost.shape[0]
    if cost.shape != (N, N):
        raise ValueError(f"cost matrix of shape {tuple(cost.shape)} must be square")
    if not isinstance(K, int) or isinstance(K, bool) or not 2 <= K <= N:
        raise ValueError(f"number of steps K={K!r} must be an integer in [2, N={N}]")
    c = np.asarray(torch.as_tensor(cost, dtype=torch.float64).cpu())
    c = np.where(np.triu(np.ones((N, N), dtype=bool), k=1), c, math.inf)
    if np.isnan(c).any():
        raise ValueError("cost matrix holds NaN")
    into = np.ascontiguousarray(c.T)  # into[t, s] = cost[s, t]: each target's minimum runs over contiguous memory
    W = N - K + 1
    rows = np.arange(W)
    best = into[1 : 1 + W, 0].copy()  # least cost of reaching node 1 + j at position 1
    back = np.zeros((K, W), dtype=np.int64)  # back[k, j]: the node before node k + j at position k
    total = np.empty((W, W))
    for k in range(2, K):
        np.add(into[k : k + W, k - 1 : k - 1 + W], best[None, :], out=total)
        arg = total.argmin(axis=1)
        best = total[rows, arg]
        back[k] = arg + k - 1
    path = [N - 1]
    for k in range(K - 1, 0, -1):
        path.append(int(back[k, path[-1] - k]))
    return torch.tensor(path[::-1], dtype=torch.int64)


def optimal_trajectory(alpha_bars: torch.Tensor, gamma: torch.Tensor, K: int) -> torch.Tensor:
    """The least-cost K-step trajectory from step 0 to step T-1 under J (Sec. 4), 0-based.

    As the official code (``_dp_seg``), steps from the first one with gamma > 1 on (impossible for the
    exact eps, so a poor estimate) are not trusted: with that tail of length L, the last 2L steps get
    K2 evenly spaced timesteps ending at T-1 and the DP runs on the rest with K1 = K - K2 nodes,
    K1 = ceil((1 - 0.8 (2L / T)) K) adjusted to fit both parts.
    """
    T = len(alpha_bars)
    if not isinstance(K, int) or isinstance(K, bool) or not 2 <= K <= T:
        raise ValueError(f"number of steps K={K!r} must be an integer in [2, T={T}]")
    g = gamma_on(gamma, T, torch.arange(1, T))
    over = torch.nonzero(g > 1.0)  # NaN (a step not estimated) compares False
    first_bad = int(over[0]) if len(over) else T
    n_bad = 2 * (T - first_bad)
    T1 = T - n_bad
    K1 = math.ceil((1.0 - 0.8 * n_bad / T) * K)
    K1 = min(K1, T1)
    K2 = min(K - K1, n_bad)
    if n_bad > 0 and K2 == 0:
        K2 = 1
    K1 = K - K2
    if T1 < 2 or not 2 <= K1 <= T1:
        raise ValueError(
            f"gamma exceeds 1 from step {first_bad} on (a poor estimate): the last {n_bad} steps are "
            f"untrusted, leaving {max(T1, 0)} of T={T} for a {K}-step trajectory"
        )
    head = least_cost_trajectory(trajectory_cost(alpha_bars[:T1], g[:T1]), K1)
    stride = n_bad / K2 if K2 else 0.0
    tail = [round(T - stride * k) - 1 for k in range(K2)][::-1]
    return torch.cat([head, torch.tensor(tail, dtype=torch.int64)])


def bound_terms_cost(alpha_bars: torch.Tensor, terms: BoundTerms, variance: str) -> torch.Tensor:
    """F[i, j] / d of the beta or beta-tilde bound over nodes 0 (x_0) and j = n + 1 (step n); [T+1, T+1].

    As the official get_nelbo_terms (core/inference/ll/elbo.py L101-128): F[0, j] the decoder's term from
    step j - 1, and for 1 <= i < j the KL of the move between their steps with sigma^2 = beta_{t|s} or
    beta-tilde_{t|s}, (tilde/sigma^2 + log(sigma^2/tilde) - 1) / 2 + abar_s beta_{t|s}^2 recon_t / (2 bbar_t^2 sigma^2).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"bound trajectory variance {variance!r} is not one of ['beta', 'beta_tilde']")
    abar = torch.as_tensor(alpha_bars, dtype=torch.float64)
    T = len(abar)
    for name, values in (("recon", terms.recon), ("decoder_nll", terms.decoder_nll)):
        if values.shape != (T,) or not torch.isfinite(values).all():
            raise ValueError(f"the beta bound's {name} must be finite at every one of the T={T} steps")
    cost = torch.full((T + 1, T + 1), math.inf, dtype=torch.float64)
    cost[0, 1:] = terms.decoder_nll
    s, t = torch.triu_indices(T, T, offset=1)
    skip_beta = 1.0 - abar[t] / abar[s]
    tilde = skip_beta * (1.0 - abar[s]) / (1.0 - abar[t])
    sigma2 = skip_beta if variance == "beta" else tilde
    kl = 0.5 * (tilde / sigma2 + torch.log(sigma2 / tilde) - 1.0)
    cost[s + 1, t + 1] = kl + 0.5 * abar[s] * skip_beta**2 / ((1.0 - abar[t]) ** 2 * sigma2) * terms.recon[t]
    return cost


def bound_trajectory(alpha_bars: torch.Tensor, terms: BoundTerms, K: int, variance: str) -> torch.Tensor:
    """The K steps, ending at T - 1, of the least sum of the bound's terms from x_0 (dp_vb.py vectorized_dp), 0-based.

    The official DP of the sigma^2 = beta baseline rows (Table 1, OT); its first step need not be step 0.
    """
    T = len(alpha_bars)
    if not isinstance(K, int) or isinstance(K, bool) or not 1 <= K <= T:
        raise ValueError(f"number of steps K={K!r} must be an integer in [1, T={T}]")
    return least_cost_trajectory(bound_terms_cost(alpha_bars, terms, variance), K + 1)[1:] - 1
