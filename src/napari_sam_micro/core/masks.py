"""Mask scores and clean-up (numpy / scipy.ndimage).

Connectivity is 8 in 2D (full connectivity in nD), as in SAM's ``remove_small_regions``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "stability_score",
    "mask_to_box_xyxy",
    "border_distance",
    "farthest_interior_point",
    "fill_holes",
    "remove_small_fragments",
    "keep_largest_component",
    "postprocess_mask",
]


def stability_score(logits: np.ndarray, mask_threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """SAM's stability score: IoU of the mask binarised at ``thr + offset`` and at ``thr - offset``.

    ``|logits > thr + offset| / |logits > thr - offset|``, per mask (the first set is contained in
    the second, so this is their IoU).

    Parameters
    ----------
    logits : (..., H, W) float
    mask_threshold : float
        The model's logit threshold (0 for SAM).
    offset : float
        SAM's ``stability_score_offset`` (1.0 by default).

    Returns
    -------
    (...) float32
        In ``[0, 1]``; 0 for masks that are empty even at the lower threshold.
    """
    logits = np.asarray(logits)
    if logits.ndim < 2:
        raise ValueError(f"logits must be (..., H, W), got shape {logits.shape}")
    inter = np.count_nonzero(logits > (mask_threshold + offset), axis=(-2, -1))
    union = np.count_nonzero(logits > (mask_threshold - offset), axis=(-2, -1))
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out.astype(np.float32)


def border_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest pixel outside the mask.

    Parameters
    ----------
    mask : (H, W) bool

    Returns
    -------
    (H, W) float64
        0 outside the mask; the image edge counts as outside (an object cut by the edge is
        shallow there).
    """
    mask = np.asarray(mask, dtype=bool)
    return ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def farthest_interior_point(mask: np.ndarray) -> tuple[int, int, float]:
    """The pixel of ``mask`` farthest from its border: where a user would click the object.

    Parameters
    ----------
    mask : (H, W) bool

    Returns
    -------
    row, col : int
        First in row-major order on ties.
    depth : float
        Its :func:`border_distance`.

    Raises
    ------
    ValueError
        For an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("empty mask has no interior point")
    dist = border_distance(mask)
    flat = int(np.argmax(dist))
    row, col = divmod(flat, mask.shape[1])
    return row, col, float(dist.flat[flat])


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """Bounding boxes of masks in SAM order.

    Parameters
    ----------
    mask : (..., H, W) bool

    Returns
    -------
    (..., 4) int64
        ``(x0, y0, x1, y1)`` with **inclusive** ``x1, y1`` (SAM's ``batched_mask_to_box``);
        ``(0, 0, 0, 0)`` for empty masks.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim < 2:
        raise ValueError(f"mask must be (..., H, W), got shape {mask.shape}")
    h, w = mask.shape[-2:]
    rows = mask.any(axis=-1)  # (..., H)
    cols = mask.any(axis=-2)  # (..., W)
    y0 = np.argmax(rows, axis=-1)
    y1 = h - 1 - np.argmax(rows[..., ::-1], axis=-1)
    x0 = np.argmax(cols, axis=-1)
    x1 = w - 1 - np.argmax(cols[..., ::-1], axis=-1)
    box = np.stack([x0, y0, x1, y1], axis=-1).astype(np.int64)
    empty = ~rows.any(axis=-1)
    box[empty] = 0
    return box


def _structure(ndim: int) -> np.ndarray:
    return ndi.generate_binary_structure(ndim, ndim)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the border (``bool``, same shape)."""
    return ndi.binary_fill_holes(np.asarray(mask, dtype=bool))


_fill_holes = fill_holes  # postprocess_mask's keyword argument shadows the name


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab, n = ndi.label(mask, structure=_structure(mask.ndim))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, sizes


def remove_small_fragments(mask: np.ndarray, min_area: int, keep_one: bool = True) -> np.ndarray:
    """Remove connected fragments smaller than ``min_area`` pixels.

    Parameters
    ----------
    mask : bool array
    min_area : int
        Fragments with fewer pixels are removed (0 or 1 keeps everything).
    keep_one : bool
        If every fragment is small, keep the largest one instead of returning an empty mask.

    Returns
    -------
    bool array, same shape
    """
    mask = np.asarray(mask, dtype=bool)
    if min_area <= 1 or not mask.any():
        return mask.copy()
    lab, sizes = _components(mask)
    keep = sizes >= min_area
    if not keep.any() and keep_one:
        keep[np.argmax(sizes)] = True
    keep[0] = False
    return keep[lab]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Only the largest connected component (the first one on ties); empty stays empty."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    lab, sizes = _components(mask)
    return lab == int(np.argmax(sizes))


def postprocess_mask(
    mask: np.ndarray,
    fill_holes: bool = False,
    min_fragment_area: int = 0,
    keep_largest: bool = False,
) -> np.ndarray:
    """Clean a predicted mask: drop small fragments, keep the largest piece, fill holes (in that order).

    Parameters
    ----------
    mask : bool array
    fill_holes : bool
    min_fragment_area : int
        See :func:`remove_small_fragments`.
    keep_largest : bool

    Returns
    -------
    bool array, same shape (a new array)
    """
    out = np.asarray(mask, dtype=bool)
    if min_fragment_area > 1:
        out = remove_small_fragments(out, min_fragment_area)
    if keep_largest:
        out = keep_largest_component(out)
    if fill_holes:
        out = _fill_holes(out)
    return out.copy() if out is mask else out
