"""Gaussian mixtures: data whose every noised marginal has an exact, closed-form score (the test oracle)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.schedules import DiscreteSchedule


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = sum_k w_k N(x; m_k, C_k) in d dimensions (float64)."""

    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, d]
    covs: torch.Tensor  # [K, d, d]

    def __post_init__(self) -> None:
        K, d = self.means.shape
        if self.weights.shape != (K,) or self.covs.shape != (K, d, d):
            raise ValueError(
                f"mixture shapes disagree: weights {tuple(self.weights.shape)}, means {(K, d)}, "
                f"covs {tuple(self.covs.shape)}"
            )
        if not torch.isclose(self.weights.sum(), torch.tensor(1.0, dtype=self.weights.dtype)):
            raise ValueError(f"mixture weights sum to {self.weights.sum().item()}, not 1")

    @classmethod
    def random(cls, n_components: int, dim: int, *, seed: int = 0, spread: float = 0.5) -> GaussianMixture:
        """A random well-conditioned mixture inside roughly [-1, 1]^dim."""
        g = torch.Generator().manual_seed(seed)
        w = torch.rand(n_components, generator=g, dtype=torch.float64) + 0.5
        means = (torch.rand(n_components, dim, generator=g, dtype=torch.float64) * 2 - 1) * spread
        a = torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64) * 0.15
        covs = a @ a.transpose(1, 2) + 0.02 * torch.eye(dim, dtype=torch.float64)
        return cls(w / w.sum(), means, covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """E[x] = sum_k w_k m_k."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Cov[x] = sum_k w_k (C_k + m_k m_k^T) - E[x] E[x]^T."""
        mu = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(mu, mu)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact draws, float64 [n, d]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + torch.einsum("nij,nj->ni", chol[k], z)

    def noised(self, scale: float | torch.Tensor, noise_var: float | torch.Tensor) -> GaussianMixture:
        """The law of scale * x + sqrt(noise_var) * eps, eps ~ N(0, I): again a Gaussian mixture."""
        scale = torch.as_tensor(scale, dtype=torch.float64)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, scale * self.means, scale**2 * self.covs + noise_var * eye)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x [n, d]."""
        comps = torch.distributions.MultivariateNormal(self.means, covariance_matrix=self.covs)
        return torch.logsumexp(comps.log_prob(x[:, None, :]) + torch.log(self.weights), dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p(x) = sum_k r_k(x) C_k^{-1} (m_k - x), r_k the component responsibilities."""
        comps = torch.distributions.MultivariateNormal(self.means, covariance_matrix=self.covs)
        logr = comps.log_prob(x[:, None, :]) + torch.log(self.weights)
        r = torch.softmax(logr, dim=1)
        prec = torch.linalg.inv(self.covs)
        diff = self.means[None, :, :] - x[:, None, :]
        return torch.einsum("nk,kij,nkj->ni", r, prec, diff)

    def entropy(self) -> float:
        """Differential entropy in nats, 0.5 log det(2 pi e C): closed-form for a single component only."""
        if self.weights.numel() != 1:
            raise ValueError("the entropy is closed-form only for a single component")
        return 0.5 * torch.logdet(2 * math.pi * math.e * self.covs[0]).item()


class ExactEpsNetwork(nn.Module):
    """Exact eps-prediction of a Gaussian mixture on a discrete chain: eps* = -sqrt(1 - abar_n) grad log q_n(x).

    Takes (x [N, *shape], n [N]) like a trained network, so samplers cannot tell the difference.
    """

    def __init__(self, mixture: GaussianMixture, schedule: DiscreteSchedule, shape: tuple[int, ...]):
        super().__init__()
        if math.prod(shape) != mixture.dim:
            raise ValueError(f"data shape {shape} does not have the mixture's {mixture.dim} dimensions")
        self.mixture = mixture
        self.alpha_bars = schedule.alpha_bars
        self.shape = tuple(shape)
        self._dummy = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = t.round().long()
        out = torch.empty(x.shape[0], self.mixture.dim, dtype=torch.float64)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        for step in torch.unique(n).tolist():
            sel = n == step
            abar = self.alpha_bars[step]
            q = self.mixture.noised(torch.sqrt(abar), 1.0 - abar)
            out[sel] = -torch.sqrt(1.0 - abar) * q.score(flat[sel])
        return out.reshape(x.shape[0], *self.shape)
