"""Matching objects of two label images by overlap: one idea behind z / t linking and tile stitching.

Two label images of the same region (neighbouring z-slices, consecutive frames, or the shared halo
of two tiles) are compared pixel by pixel; each pair of objects that overlaps gets its
intersection, and a one-to-one matching keeps the best pairs above a threshold. Linking a stack
then gives every matched object the id of its partner on the previous plane, and a fresh id
otherwise.

The overlap table is sparse (only pairs that touch), so it costs one pass over the pixels whatever
the number of objects; :func:`napari_sam_micro.core.metrics.iou_matrix` is its dense counterpart
for scoring against ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Overlaps", "overlaps", "match_overlaps", "link_labels", "link_stack", "split_at_waists"]


@dataclass(frozen=True)
class Overlaps:
    """Pairs of objects that share pixels.

    Parameters
    ----------
    ids_a, ids_b : (P,) int64
        Object ids in the first / second image (background 0 never appears).
    intersection : (P,) int64
        Pixels the pair shares.
    area_a, area_b : (P,) int64
        Each object's whole area in its image.
    """

    ids_a: np.ndarray
    ids_b: np.ndarray
    intersection: np.ndarray
    area_a: np.ndarray
    area_b: np.ndarray

    def score(self, measure: str = "iou") -> np.ndarray:
        """Per pair: ``iou`` (intersection over union), ``min`` (over the smaller object), ``a`` / ``b``
        (over the object of that image)."""
        inter = self.intersection.astype(np.float64)
        if measure == "iou":
            den = self.area_a + self.area_b - self.intersection
        elif measure == "min":
            den = np.minimum(self.area_a, self.area_b)
        elif measure in ("a", "b"):
            den = self.area_a if measure == "a" else self.area_b
        else:
            raise ValueError(f"unknown overlap measure {measure!r}")
        return inter / np.maximum(den, 1)


def _areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int64), counts[keep].astype(np.int64)


def _lookup(ids: np.ndarray, areas: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return areas[np.searchsorted(ids, wanted)]


def overlaps(a: np.ndarray, b: np.ndarray) -> Overlaps:
    """Every pair of objects of ``a`` and ``b`` that shares at least one pixel.

    Parameters
    ----------
    a, b : ndarray of int, same shape
        Label images (0 = background), any dimensionality.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label images of different shapes: {a.shape} vs {b.shape}")
    both = (a != 0) & (b != 0)
    pa = a[both].astype(np.int64)
    pb = b[both].astype(np.int64)
    if pa.size:
        keys, inter = np.unique(pa * (int(pb.max()) + 1) + pb, return_counts=True)
        ids_a, ids_b = np.divmod(keys, int(pb.max()) + 1)
    else:
        ids_a = ids_b = inter = np.zeros(0, np.int64)
    ua, aa = _areas(a)
    ub, ab = _areas(b)
    return Overlaps(ids_a, ids_b, inter.astype(np.int64), _lookup(ua, aa, ids_a), _lookup(ub, ab, ids_b))


def match_overlaps(a: np.ndarray, b: np.ndarray, min_score: float = 0.3, measure: str = "iou") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of the objects of ``a`` and ``b``, best overlap first (greedy).

    Greedy by decreasing score is exact for IoU above 0.5 (each object then has at most one partner)
    and a good approximation below; it costs a sort of the overlapping pairs.

    Parameters
    ----------
    a, b : ndarray of int, same shape
    min_score : float
        Pairs scoring below this are not matched.
    measure : str
        See :meth:`Overlaps.score`.

    Returns
    -------
    ids_a, ids_b : (M,) int64
        Matched ids, pair by pair.
    scores : (M,) float64
    """
    ov = overlaps(a, b)
    score = ov.score(measure)
    order = np.argsort(-score, kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    keep = []
    for k in order:
        if score[k] < min_score:
            break
        ia, ib = int(ov.ids_a[k]), int(ov.ids_b[k])
        if ia in used_a or ib in used_b:
            continue
        used_a.add(ia)
        used_b.add(ib)
        keep.append(k)
    keep = np.asarray(keep, np.intp)
    return ov.ids_a[keep], ov.ids_b[keep], score[keep]


def link_labels(previous: np.ndarray, current: np.ndarray, next_id: int, min_score: float = 0.3, measure: str = "iou") -> tuple[np.ndarray, int]:
    """Give the objects of ``current`` the ids of their matches in ``previous``; the rest get new ids.

    Parameters
    ----------
    previous : ndarray of int
        The already-linked neighbour (ids to carry over).
    current : ndarray of int, same shape
        Independently numbered objects of the next plane / frame / tile.
    next_id : int
        First id free for unmatched objects (larger than every id used so far).
    min_score, measure
        See :func:`match_overlaps`.

    Returns
    -------
    linked : ndarray of uint32, shape of ``current``
    next_id : int
        The next free id after this plane.
    """
    current = np.asarray(current)
    ids = np.unique(current)
    ids = ids[ids != 0].astype(np.int64)
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.uint32)
    if ids.size:
        src, dst, _ = match_overlaps(current, previous, min_score, measure)
        lut[src] = dst
        fresh = ids[lut[ids] == 0]
        lut[fresh] = np.arange(next_id, next_id + fresh.size, dtype=np.uint32)
        next_id += int(fresh.size)
    return lut[current], int(next_id)


def link_stack(stack: np.ndarray, axis: int = 0, min_score: float = 0.3, measure: str = "iou") -> np.ndarray:
    """Link independently labelled planes of a stack into objects with one id along ``axis``.

    Parameters
    ----------
    stack : ndarray of int, (..., N, ...) with planes along ``axis``
        Each plane numbered on its own (ids may repeat between planes).
    axis : int
        The z or t axis.
    min_score, measure
        See :func:`match_overlaps`; each plane is matched to the previous one.

    Returns
    -------
    ndarray of uint32, the shape of ``stack``
        Ids ``1..K``: an object keeps its id while it overlaps its predecessor.
    """
    planes = np.moveaxis(np.asarray(stack), axis, 0)
    out = np.zeros(planes.shape, np.uint32)
    next_id = 1
    for k, plane in enumerate(planes):
        if k == 0:
            out[0], next_id = link_labels(np.zeros_like(plane), plane, next_id, min_score, measure)
        else:
            out[k], next_id = link_labels(out[k - 1], plane, next_id, min_score, measure)
    return np.moveaxis(out, 0, axis)


def _profiles(planes: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    """``{id: [(plane index, area), ...]}`` of a stack with planes first."""
    out: dict[int, list[tuple[int, int]]] = {}
    for k, plane in enumerate(planes):
        ids, counts = _areas(plane)
        for i, n in zip(ids.tolist(), counts.tolist()):
            out.setdefault(i, []).append((k, n))
    return out


def _waists(areas: np.ndarray, ratio: float) -> list[int]:
    """Positions where an area profile has a waist: a local minimum below ``ratio`` x the peaks on both sides."""
    cuts = []
    for k in range(1, len(areas) - 1):
        if areas[k] <= areas[k - 1] and areas[k] <= areas[k + 1]:
            if areas[k] < ratio * min(areas[:k].max(), areas[k + 1 :].max()) and (not cuts or k - cuts[-1] > 1):
                cuts.append(k)
    return cuts


def split_at_waists(stack: np.ndarray, axis: int = 0, ratio: float = 0.85, min_planes: int = 1) -> np.ndarray:
    """Split linked 3D objects where their cross-section narrows, and drop objects on too few planes.

    Per-plane objects linked by overlap (:func:`link_stack`) join nuclei stacked in z at the same
    place (one ends, the next begins below it) and keep stray one-plane fragments. A convex object's
    cross-section area rises and falls once along z; a linked object whose area has a local minimum
    below ``ratio`` x the largest area on each side of it is cut there (the minimum's plane ends the
    object above it). For z only: a cell's area over time has no such shape.

    Parameters
    ----------
    stack : ndarray of int, planes along ``axis``
        Linked labels (one id per 3D object).
    axis : int
    ratio : float
        Waist depth in (0, 1]; smaller cuts only deep waists.
    min_planes : int
        Objects (after cutting) on fewer planes are removed (1 keeps all).

    Returns
    -------
    ndarray of uint32, the shape of ``stack``
        Ids ``1..K`` in order of first appearance along ``axis``.
    """
    planes = np.moveaxis(np.asarray(stack), axis, 0)
    profiles = _profiles(planes)
    luts = [dict() for _ in range(len(planes))]  # per plane: old id -> new id
    next_id = 1
    for i in sorted(profiles, key=lambda j: (profiles[j][0][0], j)):
        where = np.array([k for k, _ in profiles[i]])
        areas = np.array([n for _, n in profiles[i]], np.float64)
        bounds = [0, *(k + 1 for k in _waists(areas, ratio)), len(where)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if where[b - 1] - where[a] + 1 < min_planes:
                continue
            for k in where[a:b]:
                luts[int(k)][i] = next_id
            next_id += 1
    out = np.zeros(planes.shape, np.uint32)
    for k, plane in enumerate(planes):
        if luts[k]:
            old = np.fromiter(luts[k].keys(), np.int64)
            lut = np.zeros(int(max(old.max(), plane.max())) + 1, np.uint32)
            lut[old] = np.fromiter(luts[k].values(), np.uint32)
            out[k] = lut[plane]
    return np.moveaxis(out, 0, axis)
