"""Bootstrap confidence intervals clustered by image, for evaluation scores.

Objects of one image are not independent (same staining, focus, crowding), so the resampling unit
is the image: each resample draws images with replacement and recomputes the statistic from all
their objects. Percentile intervals, a seeded generator: the same rows give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["N_RESAMPLES", "CI_LEVEL", "CI_SEED", "clustered_mean_ci", "pooled_f1_ci", "pooled_f1"]

#: Resamples of the bootstrap.
N_RESAMPLES = 1000
#: Coverage of the interval.
CI_LEVEL = 0.95
#: Seed of the resampling (fixed: the same evaluation rows give the same interval).
CI_SEED = 20261202


def _draws(n_clusters: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_clusters)`` int64 counts: how often each cluster is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_resamples)


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def clustered_mean_ci(
    values: Sequence[float], clusters: Sequence[object], n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL, seed: int = CI_SEED,
) -> tuple[float, float]:
    """Interval of the mean of ``values`` (per object), resampling whole clusters (images).

    Parameters
    ----------
    values : sequence of float, shape (n,)
        One score per object (IoU).
    clusters : sequence, shape (n,)
        The image of each object (any hashable).

    Returns
    -------
    (low, high) : tuple of float
        ``(nan, nan)`` with fewer than two clusters: one image says nothing about how the score
        varies between images, so no interval is given rather than a zero-width one.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(clusters),):
        raise ValueError("values and clusters must have the same length")
    _, ids = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(ids.max()) + 1 if ids.size else 0
    if n_clusters < 2:
        return float("nan"), float("nan")
    sums = np.bincount(ids, weights=values, minlength=n_clusters)
    counts = np.bincount(ids, minlength=n_clusters).astype(np.float64)
    draws = _draws(n_clusters, n_resamples, seed)
    return _interval((draws @ sums) / (draws @ counts), level)


def pooled_f1(tp: float, fp: float, fn: float) -> float:
    """``2 TP / (2 TP + FP + FN)``; 1.0 when there is nothing to find and nothing found."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 1.0


def pooled_f1_ci(
    counts: Sequence[Sequence[int]], n_resamples: int = N_RESAMPLES, level: float = CI_LEVEL,
    seed: int = CI_SEED,
) -> tuple[float, float]:
    """Interval of the pooled F1 (TP, FP, FN summed over images), resampling images.

    Parameters
    ----------
    counts : sequence of (tp, fp, fn), shape (n_images, 3)
        Matches at IoU 0.5 of each image.

    Returns
    -------
    (low, high) : tuple of float
        ``(nan, nan)`` with fewer than two images (see :func:`clustered_mean_ci`).
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    if len(counts) < 2:
        return float("nan"), float("nan")
    tp, fp, fn = (_draws(len(counts), n_resamples, seed) @ counts).T
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.ones_like(tp), where=denom > 0)
    return _interval(f1, level)
