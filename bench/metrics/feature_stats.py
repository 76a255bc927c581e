"""Mergeable feature statistics, Frechet distances and Inception Scores, in numpy and scipy.

Nothing here imports torch, torch-fidelity or clean-fid at module level: the per-cell FD/IS job of
the digits CNN runs on numpy alone (importing torch costs a short job more than its work), and a
backend's own FD formula is imported only when it is asked for.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.special

from bench.runtime.io import CorruptFileError, atomic_npz, load_npz

# torch-fidelity's default rng_seed: the permutation applied before splitting for IS.
IS_SHUFFLE_SEED = 2020
# pytorch-fid / clean-fid tolerance on the imaginary diagonal of sqrtm(sigma1 @ sigma2).
IMAGINARY_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Sufficient statistics of features: count, sum and sum of outer products (float64)."""

    n: int
    sum: np.ndarray
    sum_outer: np.ndarray

    def __post_init__(self) -> None:
        if int(self.n) != self.n or self.n < 0:
            raise ValueError(f"FeatureStats.n must be a non-negative integer, got {self.n!r}")
        total = np.asarray(self.sum, dtype=np.float64)
        outer = np.asarray(self.sum_outer, dtype=np.float64)
        if total.ndim != 1 or outer.shape != (total.size, total.size):
            raise ValueError(
                f"FeatureStats needs sum [F] and sum_outer [F, F], got {list(total.shape)} and {list(outer.shape)}"
            )
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "sum_outer", outer)

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        """Statistics of a [N, F] feature matrix."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be a [N, F] matrix, got shape {list(x.shape)}")
        return cls(n=x.shape[0], sum=x.sum(axis=0), sum_outer=x.T @ x)

    @classmethod
    def from_moments(cls, mean: np.ndarray, cov: np.ndarray, n: int) -> FeatureStats:
        """Sums that give back `mean` and the unbiased `cov` of n samples: n mu and (n - 1) S + n mu mu^T."""
        if int(n) != n or n < 2:
            raise ValueError(f"from_moments needs a sample count n >= 2, got {n!r}")
        mu = np.asarray(mean, dtype=np.float64)
        sigma = np.asarray(cov, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise ValueError(
                f"from_moments needs mean [F] and cov [F, F], got {list(mu.shape)} and {list(sigma.shape)}"
            )
        return cls(n=int(n), sum=n * mu, sum_outer=(n - 1) * sigma + n * np.outer(mu, mu))

    @property
    def dim(self) -> int:
        return self.sum.size

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both sample sets."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge FeatureStats of dimension {self.dim} and {other.dim}")
        return FeatureStats(n=self.n + other.n, sum=self.sum + other.sum, sum_outer=self.sum_outer + other.sum_outer)

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("the mean of FeatureStats needs n >= 1, got n = 0")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divisor n - 1), as np.cov in pytorch-fid and torch-fidelity."""
        if self.n < 2:
            raise ValueError(f"the covariance of FeatureStats needs n >= 2, got n = {self.n}")
        mean = self.mean
        return (self.sum_outer - self.n * np.outer(mean, mean)) / (self.n - 1)

    def content_hash(self) -> str:
        """sha256 of n, the dimension and both arrays (little-endian float64 bytes)."""
        digest = hashlib.sha256()
        digest.update(np.array([self.n, self.dim], dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.sum, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(self.sum_outer, dtype="<f8").tobytes())
        return digest.hexdigest()

    def save(self, path: Path) -> Path:
        """Write an .npz (n, sum, sum_outer, sha256 of their content) atomically."""
        return atomic_npz(
            Path(path),
            n=np.array(self.n, dtype=np.int64),
            sum=self.sum,
            sum_outer=self.sum_outer,
            sha256=np.array(self.content_hash()),
        )

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        """Read a file written by save; a content hash mismatch raises CorruptFileError."""
        data = load_npz(Path(path), required=("n", "sum", "sum_outer", "sha256"))
        stats = cls(n=int(data["n"]), sum=data["sum"], sum_outer=data["sum_outer"])
        recorded, actual = str(data["sha256"]), stats.content_hash()
        if actual != recorded:
            raise CorruptFileError(f"{path}: content hash {actual} does not match the recorded sha256 {recorded}")
        return stats


# ---------------------------------------------------------------------------------------------
# Distances and scores


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
    """FD of two Gaussians (Heusel et al. 2017): |mu1-mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Computed in float64 with scipy's sqrtm, handled as pytorch-fid does: a non-finite square
    root is retried with `eps` added to both diagonals; the round-off imaginary part of a
    product of nearly singular matrices is dropped when every imaginary diagonal entry is
    within 1e-3 of zero, and a larger one raises ValueError.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be vectors of equal length, got {list(mu1.shape)} and {list(mu2.shape)}")
    square = (mu1.size, mu1.size)
    if sigma1.shape != square or sigma2.shape != square:
        raise ValueError(
            f"covariances must be {list(square)} to match the means, got {list(sigma1.shape)} and {list(sigma2.shape)}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(mu1.size) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=IMAGINARY_ATOL):
            largest = float(np.max(np.abs(covmean.imag)))
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary component of {largest}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fd_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """Frechet distance between the Gaussians fitted to two sets of feature statistics."""
    return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)


def frechet_distance_cleanfid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The same distance computed by clean-fid's cleanfid.fid.frechet_distance."""
    from bench.runtime.torchvision_compat import import_torchvision

    import_torchvision()  # clean-fid imports torchvision too
    try:
        from cleanfid import fid as cleanfid_fid
    except ImportError as error:
        raise ImportError(
            "frechet_distance_cleanfid needs clean-fid: pip install -c constraints.txt clean-fid"
        ) from error
    with warnings.catch_warnings():
        # clean-fid 0.1.35 passes sqrtm(disp=False), deprecated since SciPy 1.16.
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated")
        return float(cleanfid_fid.frechet_distance(mu1, sigma1, mu2, sigma2))


def inception_score(
    logits: np.ndarray, *, splits: int = 10, shuffle_seed: int | None = IS_SHUFFLE_SEED
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split (Salimans et al. 2016); mean and std over splits.

    Follows torch-fidelity: rows are permuted with np.random.RandomState(shuffle_seed) (None
    keeps the order), split i is rows [i N / splits, (i + 1) N / splits), p(y) is the split's
    mean prediction, and the std is the population std of the per-split scores.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be a [N, C] matrix, got shape {list(z.shape)}")
    n = z.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must lie in 1..{n} (the number of samples), got {splits}")
    if shuffle_seed is not None:
        z = z[np.random.RandomState(shuffle_seed).permutation(n)]
    p = scipy.special.softmax(z, axis=1)
    log_p = scipy.special.log_softmax(z, axis=1)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        log_marginal = np.log(p[rows].mean(axis=0, keepdims=True))
        kl = (p[rows] * (log_p[rows] - log_marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_from_probs(probs: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
    """IS of class probabilities p(y|x) (Salimans et al. 2016), as StyleGAN2-ADA / EDM compute it.

    Split i is rows [i N / splits, (i + 1) N / splits) without shuffling; terms with p = 0 count 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a [N, C] matrix, got shape {list(p.shape)}")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must lie in 1..{n} (the number of samples), got {splits}")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(part, part) - scipy.special.xlogy(part, np.broadcast_to(marginal, part.shape))
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


# The digits CNN's FD backend: frechet_distance above, which tests/test_fid_is.py pins to the FD that
# torch-fidelity's calculate_metrics gives with the same CNN as a custom feature extractor (and to
# clean-fid's formula), so a per-cell job needs neither library (their imports cost it seconds).
OWN_BACKEND = "dpm-bench"
FD_BACKENDS = (OWN_BACKEND, "clean-fid", "torch-fidelity")


def frechet_distance_of_backend(backend: str, stats1: FeatureStats, stats2: FeatureStats) -> float:
    """FD of two sets of statistics with the backend's own formula (torch-fidelity: eigenvalues; clean-fid: sqrtm)."""
    mu1, sigma1, mu2, sigma2 = stats1.mean, stats1.cov, stats2.mean, stats2.cov
    if backend == OWN_BACKEND:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    if backend == "torch-fidelity":
        from bench.runtime.torchvision_compat import import_torchvision

        import_torchvision()  # torch-fidelity imports torchvision, which on CPU-only torch needs the nms shim first
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        result = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
        return float(result[KEY_METRIC_FID])
    if backend == "clean-fid":
        return frechet_distance_cleanfid(mu1, sigma1, mu2, sigma2)
    raise ValueError(f"FD backend {backend!r} is not allowed; allowed: {list(FD_BACKENDS)}")


# ---------------------------------------------------------------------------------------------
# Inputs of the extractors


def check_level_images(images: np.ndarray, max_level: int, what: str = "images") -> None:
    """Raise ValueError unless `images` is uint8 [N, C, H, W] with values in 0..max_level."""
    if not isinstance(max_level, int | np.integer) or not 1 <= max_level <= 255:
        raise ValueError(f"max_level must be an integer in 1..255, got {max_level!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{what} must be a uint8 numpy array of levels, got {found}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{what} must have shape [N, C, H, W] with N >= 1, got {images.shape}")
    top = int(images.max())
    if top > max_level:
        raise ValueError(f"{what} hold level {top}, above max_level {max_level}")
