"""Sufficient statistics of a feature set, merged across chunks and processes, for the Fréchet distance.

FD needs only each set's count, mean and covariance, so features can be streamed: each chunk (or process)
keeps ``n``, its mean and its centred sum of outer products ``M2 = sum (x - mean)(x - mean)^T``, and two
such summaries merge exactly (Chan, Golub and LeVeque's pairwise update, the count / sum / outer-product-sum
merge written in centred form so that large means do not cancel). The FD of the merged statistics equals the
FD of all features at once; it is never an average of per-shard FDs. Hand-written: torchmetrics' FID keeps
the same sums but only behind its own image feature extractors, and medsd's features (radiomics, RadImageNet,
...) come from ``medsd.metrics.features``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass
class FeatureStats:
    """Count, mean and centred outer-product sum of a stream of ``[N, D]`` feature chunks (float64)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        """The statistics of one chunk ``[N, D]``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features: expected [N, D], got shape {x.shape}")
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
        centred = x - mean
        return cls(len(x), mean, centred.T @ centred)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both streams together (exact, order-independent up to rounding)."""
        if other.count == 0 or other.mean is None:
            return self
        if self.count == 0 or self.mean is None:
            return other
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"feature sizes differ: {self.mean.shape[0]} vs {other.mean.shape[0]}")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        return FeatureStats(n, mean, m2)

    def update(self, features: np.ndarray) -> FeatureStats:
        """The statistics with one more chunk."""
        return self.merge(FeatureStats.of(features))

    @classmethod
    def merged(cls, parts: Iterable[FeatureStats]) -> FeatureStats:
        """The statistics of several chunks or processes."""
        total = cls()
        for part in parts:
            total = total.merge(part)
        return total

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (``np.cov``'s ``n - 1``)."""
        if self.count < 2 or self.m2 is None:
            raise ValueError("need at least 2 samples per set")
        return np.atleast_2d(self.m2 / (self.count - 1))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """A form ``np.savez`` keeps (one file per process, merged by the main process)."""
        return {"count": np.asarray(self.count), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> FeatureStats:
        return cls(int(d["count"]), np.asarray(d["mean"]), np.asarray(d["m2"]))


def frechet_distance_of_stats(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """The Fréchet distance between two feature sets given by their statistics."""
    from .distribution import frechet_distance_from_moments

    return frechet_distance_from_moments(a.mean, a.covariance, b.mean, b.covariance, eps)


__all__ = ["FeatureStats", "frechet_distance_of_stats"]
