"""FD of many bootstrap resamples of one cell's features against fixed reference statistics, in torch float64.

The reference covariance Sigma_r is fixed, so its symmetric square root S = Sigma_r^{1/2} is taken
once (eigh, round-off negative eigenvalues clamped at 0) and the features are whitened once,
Y = (X - m) S. A resample with bootstrap counts c has the covariance Sigma_g of X weighted by c,
and S Sigma_g S is the same weighted covariance of Y. Sigma_g Sigma_r = Sigma_g S S has the
eigenvalues of S Sigma_g S (AB and BA share them), which is symmetric positive semi-definite, so

    tr (Sigma_g Sigma_r)^{1/2} = sum_i lambda_i(S Sigma_g S)^{1/2}

(Heusel et al. 2017's FD term): one GEMM and one symmetric eigvalsh per resample, where the
backends' formulas take a general sqrtm or eig of Sigma_g Sigma_r. Covariances are unbiased
(divisor n - 1), as FeatureStats.cov and therefore every backend's FD of a cell.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.metrics.feature_stats import FeatureStats


def psd_root(cov: torch.Tensor) -> torch.Tensor:
    """The symmetric square root V diag(max(w, 0))^{1/2} V^T of a symmetric PSD matrix V diag(w) V^T."""
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp(min=0).sqrt()) @ v.T


class WhitenedFD:
    """FD(features weighted by counts, reference) for count vectors over the rows of fixed features."""

    def __init__(self, features: np.ndarray, reference: FeatureStats, device: torch.device) -> None:
        x = torch.as_tensor(np.asarray(features, dtype=np.float64), device=device)
        if x.ndim != 2 or x.shape[1] != reference.dim:
            raise ValueError(f"features must be [N, {reference.dim}] to match the reference, got {list(x.shape)}")
        self.device = device
        self.n = x.shape[0]
        # Centring at the sample mean keeps the weighted covariance free of the cancellation in E[x x^T] - m m^T.
        self.center = x.mean(dim=0)
        self.centred = x - self.center
        del x
        cov_r = torch.as_tensor(reference.cov, device=device)
        self.root = psd_root(cov_r)
        self.trace_r = torch.trace(cov_r)
        self.mean_r = torch.as_tensor(reference.mean, device=device)
        self.whitened = self.centred @ self.root
        self.row_norms = (self.centred * self.centred).sum(dim=1)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """FD of each row of counts [B, N] (each summing to N, the resample size) against the reference."""
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64), device=self.device)
        if c.ndim != 2 or c.shape[1] != self.n:
            raise ValueError(f"counts must be [B, {self.n}], got {list(c.shape)}")
        n = self.n
        shift = c @ self.centred / n
        mean_term = ((self.center + shift - self.mean_r) ** 2).sum(dim=1)
        trace_g = (c @ self.row_norms - n * (shift * shift).sum(dim=1)) / (n - 1)
        shift_y = shift @ self.root
        root_traces = torch.empty(len(c), dtype=torch.float64, device=self.device)
        for b, weights in enumerate(c):
            rows = weights.nonzero().squeeze(1)
            scaled = self.whitened[rows] * weights[rows].sqrt()[:, None]
            cov_y = (scaled.T @ scaled - n * torch.outer(shift_y[b], shift_y[b])) / (n - 1)
            root_traces[b] = torch.linalg.eigvalsh(cov_y).clamp(min=0).sqrt().sum()
        return (mean_term + trace_g + self.trace_r - 2 * root_traces).cpu().numpy()
