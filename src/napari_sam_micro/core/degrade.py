"""Deliberately degraded label images: what refining existing labels is measured on.

Ground-truth labels are spoiled the ways other tools get nuclei wrong: borders too tight
(:func:`erode_labels`), too loose (:func:`dilate_labels`), touching objects merged
(:func:`merge_touching_pairs`). The amount follows each object's size (a fraction of its
equivalent radius), so small and large nuclei are spoiled alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["DEGRADATIONS", "erode_labels", "dilate_labels", "merge_touching_pairs", "degrade_labels", "best_match_iou"]

#: Names :func:`degrade_labels` accepts.
DEGRADATIONS = ("none", "erode", "dilate", "merge")


def _radius(area: int) -> float:
    return float(np.sqrt(area / np.pi))


def erode_labels(labels: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Each object eroded by ``fraction`` x its equivalent radius (at least one pixel); objects that
    would vanish keep one pixel-wide core (their farthest interior pixels)."""
    labels = np.asarray(labels)
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[padded] == i
        depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        d = max(1.0, fraction * _radius(int(mask.sum())))
        keep = depth > d
        if not keep.any():
            keep = depth >= depth.max()
        out[padded][keep] = i
    return out


def dilate_labels(labels: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Each object grown into the background by ``fraction`` x its equivalent radius (at least one
    pixel); where two objects grow into the same pixel the nearer one takes it."""
    labels = np.asarray(labels)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    reach = np.zeros(int(labels.max()) + 1 if labels.size else 1)
    reach[ids] = np.maximum(1.0, fraction * np.sqrt(areas / np.pi))
    dist, (rr, cc) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    nearest = labels[rr, cc]
    grow = (labels == 0) & (dist <= reach[nearest])
    out = labels.copy()
    out[grow] = nearest[grow]
    return out


def merge_touching_pairs(labels: np.ndarray, gap: int = 2) -> tuple[np.ndarray, int]:
    """Merge pairs of objects closer than ``gap`` pixels (each object in at most one pair, the pair
    keeps the lower id, the gap between them is filled). Returns ``(labels, pairs merged)``."""
    labels = np.asarray(labels)
    out = labels.copy()
    used: set[int] = set()
    pairs = 0
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or i in used:
            continue
        pad = tuple(slice(max(s.start - gap, 0), s.stop + gap) for s in sl)
        near = ndi.binary_dilation(labels[pad] == i, iterations=gap)
        others = [int(j) for j in np.unique(labels[pad][near]) if j not in (0, i) and j not in used]
        if not others:
            continue
        j = others[0]
        used.update((i, j))
        pairs += 1
        both = (labels == i) | (labels == j)
        rows, cols = np.nonzero(both)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        bridge = ndi.binary_closing(both[box], iterations=gap) & (labels[box] == 0)
        out[box][both[box] | bridge] = min(i, j)
    return out, pairs


def degrade_labels(labels: np.ndarray, how: str, fraction: float = 0.25) -> np.ndarray:
    """``labels`` spoiled by one of :data:`DEGRADATIONS` (``"none"`` returns a copy)."""
    if how == "none":
        return np.array(labels, copy=True)
    if how == "erode":
        return erode_labels(labels, fraction)
    if how == "dilate":
        return dilate_labels(labels, fraction)
    if how == "merge":
        return merge_touching_pairs(labels)[0]
    raise ValueError(f"unknown degradation {how!r}; use one of {DEGRADATIONS}")


def best_match_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(G,)`` IoU of each ground-truth object (id order) with the predicted object it overlaps most (0 when none)."""
    from .metrics import iou_matrix

    _, _, iou = iou_matrix(gt, pred)
    return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])
