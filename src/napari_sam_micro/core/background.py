"""Background subtraction for the seed search: a white top-hat, band by band.

Otsu's threshold on the raw intensity finds the nuclei only where the background is flat. Where
nuclei sit on a bright, uneven background (the out-of-focus body of an embryo, autofluorescent
tissue, a dim nucleus beside a bright halo) the foreground becomes one large blob and its distance
transform has its maxima in the middle of the blob, not in the nuclei. A white top-hat (the signal
minus its grey opening by a square wider than the objects) removes what is wider than the square
and keeps the objects, so the threshold that follows separates them
(:func:`napari_sam_micro.core.seeds.foreground_mask`).

Pure numpy/scipy: the opening is scipy's separable minimum / maximum filters of a square, run on
bands of rows (same values as on the whole plane, without whole-plane temporaries).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .bands import filter_in_place

__all__ = ["white_tophat_in_place", "median_object_diameter"]


def white_tophat_in_place(signal: np.ndarray, radius: int) -> None:
    """``signal[...] -= grey_opening(signal, (2 r + 1, 2 r + 1))``, band by band.

    An output row of the opening (a minimum filter, then a maximum filter, each ``2 r + 1`` wide)
    depends on the input rows within ``2 r`` of it (:func:`~napari_sam_micro.core.bands.filter_in_place`).
    Equal to ``scipy.ndimage.white_tophat(signal, size=2 r + 1)`` (tested).

    Parameters
    ----------
    signal : (H, W) float32 or float64
        Modified in place; the result is >= 0.
    radius : int
        Half the side of the square; structures narrower than ``2 r + 1`` pixels are kept.
    """
    size = 2 * int(radius) + 1

    def tophat(rows: np.ndarray) -> np.ndarray:
        return rows - ndi.maximum_filter(ndi.minimum_filter(rows, size=size), size=size)

    filter_in_place(signal, tophat, 2 * int(radius))


def median_object_diameter(objects: np.ndarray, pieces: np.ndarray, max_pieces: int = 4, min_area: int = 20) -> float:
    """Median equivalent diameter ``2 sqrt(area / pi)`` of a plane's objects (pixels).

    ``objects`` is the intensity's own foreground and ``pieces`` the foreground after a narrow
    top-hat. An object holding at most ``max_pieces`` pieces counts as one object (a large nucleus
    that the top-hat cut into a ring or four caps, or a few touching nuclei); one holding more is a
    bright body with nuclei on it, and its pieces count instead; pieces outside every object (dim
    nuclei) count too.

    Parameters
    ----------
    objects, pieces : (H, W) bool
    max_pieces : int
    min_area : int
        Smaller objects and pieces (specks) are left out.

    Returns
    -------
    float
        0.0 when nothing is at least ``min_area`` pixels.
    """
    eight = np.ones((3, 3), bool)
    obj, n_obj = ndi.label(objects, structure=eight)
    pcs, n_pcs = ndi.label(pieces, structure=eight)
    obj_area = np.bincount(obj.ravel(), minlength=n_obj + 1)
    pcs_area = np.bincount(pcs.ravel(), minlength=n_pcs + 1)
    # the object each piece lies in: the one holding most of its pixels (0: none)
    both = (obj > 0) & (pcs > 0)
    keys, overlap = np.unique(pcs[both].astype(np.int64) * (n_obj + 1) + obj[both], return_counts=True)
    piece, home_obj = keys // (n_obj + 1), keys % (n_obj + 1)
    order = np.lexsort((overlap, piece))  # by piece, then overlap: the last of each piece is its home
    last = np.r_[piece[order][1:] != piece[order][:-1], True] if order.size else np.zeros(0, bool)
    home = np.zeros(n_pcs + 1, np.int64)
    home[piece[order][last]] = home_obj[order][last]
    held = np.bincount(home[1:][pcs_area[1:] >= min_area], minlength=n_obj + 1)
    whole = (obj_area[1:] >= min_area) & (held[1:] <= max_pieces)
    alone = (pcs_area[1:] >= min_area) & ((home[1:] == 0) | (held[home[1:]] > max_pieces))
    areas = np.concatenate([obj_area[1:][whole], pcs_area[1:][alone]]).astype(np.float64)
    if areas.size == 0:
        return 0.0
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))
