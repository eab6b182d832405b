"""Distances between two sets of feature vectors: the Fréchet distance (FVD, FMD) and the
unbiased polynomial-kernel MMD (KVD). Everything is computed in float64.

Fréchet distance between N(mu1, S1) and N(mu2, S2):

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

How the square root is taken: S1 S2 is not symmetric, but for symmetric positive semi-definite
S1 = A A (A = S1^(1/2), from the eigendecomposition of S1 with negative round-off eigenvalues set
to 0), S1 S2 = A (A S2) has the same non-zero eigenvalues as (A S2) A = A S2 A, which is symmetric
PSD. So tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A S2 A)), again with round-off negatives set to 0.
Two symmetric eigendecompositions, no general (Schur-based) matrix square root: exact for
singular (rank-deficient) covariances, where scipy.linalg.sqrtm of the product may return
complex round-off or fail. The tests compare it with scipy.linalg.sqrtm on full-rank and
rank-deficient covariances.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeatureStats", "frechet_distance", "frechet_from_features", "kernel_distance"]


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


class FeatureStats:
    """Running mean and covariance of feature vectors (float64, constant memory), optionally
    keeping the features themselves (for the kernel distance: N x F floats, not videos).

    The covariance is the biased one (divided by N), as StyleGAN-V's FVD computes it."""

    def __init__(self, keep: bool = True):
        self.n = 0
        self.sum = None
        self.outer = None
        self.keep = keep
        self._rows: list[np.ndarray] = []

    def add(self, feats) -> None:
        f = _f64(feats)
        if f.ndim != 2:
            raise ValueError(f"features must be (N, F), got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features contain NaN or Inf")
        if self.sum is None:
            self.sum = np.zeros(f.shape[1])
            self.outer = np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"features have {f.shape[1]} dimensions, earlier ones {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f
        if self.keep:
            self._rows.append(f)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        mu = self.mean
        return self.outer / self.n - np.outer(mu, mu)

    @property
    def features(self) -> np.ndarray:
        if not self.keep:
            raise ValueError("this FeatureStats was made with keep=False")
        return np.concatenate(self._rows) if self._rows else np.zeros((0, 0))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between two Gaussians (see the module docstring for the square root)."""
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be equal-length vectors, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def frechet_from_features(x, y) -> float:
    """Fréchet distance between the Gaussians fitted to feature sets x (N, F) and y (M, F)
    (biased covariances)."""
    sx, sy = FeatureStats(keep=False), FeatureStats(keep=False)
    sx.add(x)
    sy.add(y)
    return frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov)


def kernel_distance(x, y, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 between feature sets x (N, F) and y (M, F), N, M >= 2, with the polynomial
    kernel k(a, b) = (a.b / F + coef)^degree (the KID/KVD kernel): the within-set sums leave out
    the diagonal (i = j) terms. About 0 (either sign) for two samples of one distribution."""
    x, y = _f64(x), _f64(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, F) and (M, F), got {x.shape} and {y.shape}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the kernel distance needs at least 2 vectors per set, got {n} and {m}")
    f = x.shape[1]
    kxx = (x @ x.T / f + coef) ** degree
    kyy = (y @ y.T / f + coef) ** degree
    kxy = (x @ y.T / f + coef) ** degree
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())
