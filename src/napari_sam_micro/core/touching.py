"""Touching nuclei in the seeded everything mode: one seed per nucleus, masks that stay in their nucleus.

Two nuclei pressed together form one blob of Otsu's foreground. Its distance transform has one
maximum per nucleus when the neck between them is narrower than the nuclei, but a maximum filter
of a fixed radius (``find_seeds``'s default) also keeps the shallow bumps of one irregular nucleus
and, at small radii, loses one of two close nuclei. Here:

* **seeds**: the h-maxima of the seed score (:func:`h_maxima_seeds`): a maximum is kept when it
  rises at least ``h`` above the saddle that joins it to a higher one, whatever their distance;
* **masks**: the foreground is cut into one watershed basin per seed (:func:`seed_basins`, on the
  inverted distance transform, so the cuts follow the necks); a seed's mask that covers another
  seed is clipped to leave that seed's basin (:func:`clip_merged_masks`), so a click that the
  decoder answers with both nuclei gives only its own.

numpy/scipy with scikit-image's ``h_maxima`` and ``watershed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TOUCHING_H", "CROWDED_TOUCHING", "CROWDED_MIN_OBJECTS", "h_maxima_seeds", "seed_basins",
           "clip_merged_masks", "touching_fraction", "is_crowded"]

#: Default ``h`` (pixels of the distance-transform score) of the seeds that split touching nuclei.
TOUCHING_H = 0.5
#: An image is "crowded" when at least this fraction of its objects touch another ...
CROWDED_TOUCHING = 0.4
#: ... and it has at least this many objects.
CROWDED_MIN_OBJECTS = 20


def h_maxima_seeds(
    score: np.ndarray, allowed: np.ndarray, h: float, min_distance: int, max_seeds: int | None = None
) -> np.ndarray:
    """Seeds at the h-maxima of ``score`` inside ``allowed``; ``(N, 2)`` float64 ``(row, col)``, highest first.

    Parameters
    ----------
    score : (H, W) float
        Seed score (distance transform plus weighted intensity, smoothed).
    allowed : (H, W) bool
        Where seeds may be (foreground far enough from the background).
    h : float
        Least height of a maximum above its saddle to a higher one.
    min_distance : int
        Seeds of two maxima closer than this (Chebyshev) keep only the higher.
    max_seeds : int, optional
        At most this many.
    """
    from skimage.morphology import h_maxima

    from .seeds import _peak_centres

    score = np.asarray(score, dtype=np.float64)
    peaks = h_maxima(score, float(h)).astype(bool) & np.asarray(allowed, bool)
    return _peak_centres(score, peaks, allowed, min_distance, max_seeds, centre_inside=True)


def seed_basins(foreground: np.ndarray, seeds_rc: np.ndarray) -> np.ndarray:
    """Watershed of the foreground's inverted distance transform from the seeds.

    Parameters
    ----------
    foreground : (H, W) bool
    seeds_rc : (N, 2) float
        ``(row, col)``; seeds off the foreground get no basin.

    Returns
    -------
    (H, W) int32
        ``k + 1`` on the basin of seed ``k``, 0 off the foreground.
    """
    from skimage.segmentation import watershed

    from .seeds import distance_to_background

    fg = np.asarray(foreground, bool)
    markers = np.zeros(fg.shape, np.int32)
    seeds = np.asarray(seeds_rc, np.float64).reshape(-1, 2)
    rows = np.clip(np.round(seeds[:, 0]).astype(int), 0, fg.shape[0] - 1)
    cols = np.clip(np.round(seeds[:, 1]).astype(int), 0, fg.shape[1] - 1)
    on = fg[rows, cols]
    # later seeds never overwrite earlier ones (best first): assign in reverse
    for k in np.flatnonzero(on)[::-1]:
        markers[rows[k], cols[k]] = k + 1
    if not markers.any():
        return markers
    return watershed(-distance_to_background(fg), markers, mask=fg).astype(np.int32, copy=False)


def clip_merged_masks(masks: Sequence[np.ndarray], seeds_rc: np.ndarray, basins: np.ndarray) -> list[np.ndarray]:
    """Masks with the basins of the other seeds they cover removed.

    Mask ``k`` (of seed ``k``) that contains the pixel of another seed ``j`` is taken to have merged
    seed ``j``'s nucleus: the pixels of basin ``j + 1`` leave it. Masks covering no other seed are
    returned as given (the same objects).

    Parameters
    ----------
    masks : sequence of (H, W) bool
        One per seed.
    seeds_rc : (N, 2) float
    basins : (H, W) int
        :func:`seed_basins` of the same seeds.

    Returns
    -------
    list of (H, W) bool
    """
    seeds = np.asarray(seeds_rc, np.float64).reshape(-1, 2)
    if len(masks) != len(seeds):
        raise ValueError(f"{len(masks)} masks for {len(seeds)} seeds")
    h, w = np.shape(basins)
    rows = np.clip(np.round(seeds[:, 0]).astype(int), 0, h - 1)
    cols = np.clip(np.round(seeds[:, 1]).astype(int), 0, w - 1)
    out = []
    for k, mask in enumerate(masks):
        mask = np.asarray(mask, bool)
        inside = np.flatnonzero(mask[rows, cols])
        others = inside[inside != k]
        if not len(others):
            out.append(mask)
            continue
        out.append(mask & ~np.isin(basins, others + 1))
    return out


def touching_fraction(labels: np.ndarray) -> float:
    """Fraction of the objects of an instance label image ``(H, W)`` int that touch another (8-neighbours).

    0.0 for an image without objects. Used to tell crowded images (many nuclei pressed together)
    from the rest in evaluations (:data:`CROWDED_TOUCHING`).
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    ids = np.unique(lab[lab > 0])
    if not len(ids):
        return 0.0
    big = lab.max() + 1
    high = ndi.grey_dilation(lab, size=3)  # largest id around each pixel
    low = -ndi.grey_dilation(-np.where(lab > 0, lab, big), size=3)  # smallest id around (background excluded)
    touching = (lab > 0) & (((high != lab) & (high > 0)) | (low != lab))
    return float(len(np.unique(lab[touching]))) / len(ids)


def is_crowded(labels: np.ndarray) -> bool:
    """Crowded image: at least :data:`CROWDED_MIN_OBJECTS` objects, :data:`CROWDED_TOUCHING` of them touching."""
    lab = np.asarray(labels)
    return len(np.unique(lab[lab > 0])) >= CROWDED_MIN_OBJECTS and touching_fraction(lab) >= CROWDED_TOUCHING
