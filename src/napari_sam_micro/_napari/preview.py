"""The preview layer: the predicted objects painted window by window.

Only the pixels of the objects are written (``Labels.data_setitem``, which refreshes the changed
region only), and only those are cleared again: a preview on a 20k x 20k plane costs its objects'
pixels, not a whole-plane label image and a whole-plane refresh per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paint_preview", "clear_preview"]


def paint_preview(layer, objects: Sequence, index: tuple[int, ...] = ()) -> tuple[np.ndarray, ...] | None:
    """Paint ``objects`` into the (cleared) preview ``layer``: object ``k`` as label ``k + 1``.

    Parameters
    ----------
    layer : napari.layers.Labels
        The preview layer, background where the objects go.
    objects : sequence of ObjectPreview
        ``crop`` (h, w) bool inside ``window`` (y0, y1, x0, x1), or the whole plane.
    index : tuple of int
        The plane's position along the layer's leading axes.

    Returns
    -------
    tuple of (N,) int arrays or None
        The painted pixels (layer indices), for :func:`clear_preview`; None when nothing was painted.
    """
    painted: list[tuple[np.ndarray, ...]] = []
    for k, obj in enumerate(objects):
        rr, cc = np.nonzero(obj.crop)
        if obj.window is not None:
            rr, cc = rr + int(obj.window[0]), cc + int(obj.window[2])
        lead = tuple(np.full(rr.shape, int(i), dtype=np.intp) for i in index)
        where = (*lead, rr, cc)
        free = np.asarray(layer.data[where]) == 0  # earlier objects win overlaps
        where = tuple(a[free] for a in where)
        if where[0].size:
            layer.data_setitem(where, k + 1)
            painted.append(where)
    if not painted:
        return None
    return tuple(np.concatenate(parts) for parts in zip(*painted))


def clear_preview(layer, painted: tuple[np.ndarray, ...] | None) -> None:
    """Set the pixels :func:`paint_preview` painted back to background."""
    if painted is not None and painted[0].size:
        layer.data_setitem(painted, 0)
