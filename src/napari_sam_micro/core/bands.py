"""Filters run on bands of rows, with the same values as on the whole plane but no whole-plane temporaries.

A filter whose output row depends on the input rows within ``margin`` of it can run band by band:
each band of :data:`BAND_ROWS` rows is filtered with ``margin`` more rows each side and only its
own rows are kept. Written back in place, the rows just above a band have already been
overwritten, so they are kept aside first. Used for the seed score's smoothing, its maximum filter
and the background's top-hat (:mod:`napari_sam_micro.core.seeds`, :mod:`napari_sam_micro.core.background`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["BAND_ROWS", "bands", "filter_in_place"]

#: Rows per band of the banded filters.
BAND_ROWS = 256


def bands(h: int, margin: int, rows: int | None = None):
    """``(r0, r1, lo, hi)``: bands ``[r0, r1)`` of ``h`` rows (``rows`` each, default :data:`BAND_ROWS`)
    and their context ``[lo, hi)`` (``margin`` more each side)."""
    rows = BAND_ROWS if rows is None else int(rows)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        yield r0, r1, max(0, r0 - margin), min(h, r1 + margin)


def filter_in_place(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], margin: int) -> None:
    """``image[...] = fn(image)`` band by band, for a row-local ``fn`` (an output row depends on the
    input rows within ``margin`` of it; same values as on the whole plane).

    Parameters
    ----------
    image : (H, W) array
        Modified in place.
    fn : callable
        ``fn(rows) -> array`` of the same shape, e.g. a scipy filter with ``mode="reflect"`` (the
        plane's own top and bottom rows are the context's at the plane's edges).
    margin : int
        Rows of context each side.
    """
    margin = int(margin)
    above = image[0:0].copy()  # original rows just above the current band
    for r0, r1, lo, hi in bands(image.shape[0], margin, max(BAND_ROWS, margin)):
        context = np.concatenate([above, image[r0:hi]]) if r0 > lo else image[r0:hi]
        out = fn(context)[r0 - lo : r1 - lo]
        above = image[max(0, r1 - margin) : r1].copy()
        image[r0:r1] = out
